"""Every client command of ``tinkjax`` end to end, in process, on the local store and a service."""

from __future__ import annotations

import json
import math
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import tinkjax
from tinkjax import errors
from tinkjax.cli import main
from tinkjax.cli._common import (
    EXIT_AUTH,
    EXIT_NOT_FOUND,
    EXIT_REJECTED,
    EXIT_SERVER,
    EXIT_USAGE,
    CliError,
    close_local_stores,
    error_of,
)

MICRO = "tinkjax/bytelm-micro"


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The local store every test of this module shares (started once, in process)."""
    mp = pytest.MonkeyPatch()
    for var in ("TINKER_API_KEY", "TINKER_BASE_URL"):
        mp.delenv(var, raising=False)
    root = tmp_path_factory.mktemp("tinkjax-home")
    mp.setenv("TINKJAX_HOME", str(root))
    try:
        yield root
    finally:
        close_local_stores()
        mp.undo()


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def cli_json(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    code, out, err = cli(capsys, *argv)
    assert code == 0, err
    return json.loads(out)


@pytest.fixture(scope="module")
def saved(home: Path) -> dict[str, Any]:
    """``tinkjax checkpoint`` once: the metadata it wrote."""
    out = home / "meta" / "ck.json"
    assert main(["checkpoint", "--base-model", MICRO, "--rank", "4", "--output", str(out)]) == 0
    return dict(json.loads(out.read_text()))


# ---------------------------------------------------------------------------- version, help
def test_version_json_names_the_checkout_commit(capsys: pytest.CaptureFixture[str]) -> None:
    info = cli_json(capsys, "version", "--json")
    assert info["version"] == tinkjax.__version__
    repo = Path(tinkjax.__file__).resolve().parents[1]
    git = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True
    )
    expected = git.stdout.strip() if git.returncode == 0 and (repo / ".git").exists() else None
    assert info["commit"] == expected
    code, out, _ = cli(capsys, "version")
    assert code == 0
    assert out.strip() == f"tinkjax {info['version']}" + (f" ({expected})" if expected else "")


@pytest.mark.parametrize(
    "argv",
    [
        ["version"], ["models"], ["model", "list"], ["checkpoint"], ["checkpoint", "list"], ["checkpoint", "info"],
        ["checkpoint", "download"], ["checkpoint", "delete"], ["run"], ["run", "list"],
        ["run", "info"], ["sample"],
    ],
)  # fmt: skip
def test_every_command_has_help(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    code, out, _ = cli(capsys, *argv, "--help")
    assert code == 0
    assert out.startswith(f"usage: tinkjax {' '.join(argv)}")


# ---------------------------------------------------------------------------- usage errors
@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["run", "--base-model", MICRO], "--prompt"),
        (["run", "--base-model", MICRO, "--prompt", "a", "--prompt-file", "f"], "--prompt"),
        (["run", "--prompt", "a"], "--base-model"),
        (["run", "--model-path", "nope", "--prompt", "a"], "tinker://"),
        (["run", "--base-model", MICRO, "--prompt", "a", "--max-tokens", "0"], "--max-tokens"),
        (["sample", "--base-model", MICRO, "--prompt-file", "/no/such/file"], "/no/such/file"),
        (["checkpoint", "--base-model", MICRO], "--output"),
        (["checkpoint", "--base-model", MICRO, "--output", "x.json", "--rank", "0"], "--rank"),
        (["checkpoint", "info", "tinker://only-two/parts"], "tinker://"),
        (["checkpoint", "delete", "tinker://r/weights/x"], "--yes"),
        (["nosuchcommand"], "invalid choice"),
    ],
)
def test_usage_errors_exit_2_naming_the_argument(
    home: Path, capsys: pytest.CaptureFixture[str], argv: list[str], needle: str
) -> None:
    code, out, err = cli(capsys, *argv)
    assert code == EXIT_USAGE, (out, err)
    assert needle in err
    assert out == ""


def test_data_dir_with_a_service_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TINKER_API_KEY", "tml-x")
    code, _, err = cli(capsys, "models", "--data-dir", str(tmp_path / "d"))
    assert code == EXIT_USAGE
    assert "--data-dir" in err
    assert not (tmp_path / "d").exists()


def test_sdk_errors_map_to_the_documented_exit_codes() -> None:
    def status(cls: type[errors.APIStatusError], code: int) -> CliError:
        return error_of(cls("m", status_code=code))

    assert status(errors.NotFoundError, 404).exit_code == EXIT_NOT_FOUND
    assert status(errors.AuthenticationError, 401).exit_code == EXIT_AUTH
    assert status(errors.PermissionDeniedError, 403).exit_code == EXIT_AUTH
    assert status(errors.BadRequestError, 400).exit_code == EXIT_REJECTED
    assert status(errors.RateLimitError, 429).exit_code == EXIT_REJECTED
    assert status(errors.InternalServerError, 503).exit_code == EXIT_SERVER
    assert error_of(errors.APIConnectionError()).exit_code == EXIT_SERVER
    assert error_of(errors.APITimeoutError()).exit_code == EXIT_SERVER
    assert error_of(errors.ConfigurationError("bad")).exit_code == EXIT_USAGE
    assert error_of(RuntimeError("boom")).exit_code == 1
    assert error_of(KeyboardInterrupt()).exit_code == 130
    with pytest.raises(ValueError, match="kind"):
        CliError("x", "no-such-kind")


# ---------------------------------------------------------------------------- models
def test_models_table_json_and_filter(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tinkjax.models import PRESETS

    doc = cli_json(capsys, "-f", "json", "models")
    assert sorted(m["model_name"] for m in doc["models"]) == sorted(PRESETS)
    assert cli_json(capsys, "model", "list", "-f", "json") == doc  # the official CLI's name
    micro = cli_json(capsys, "models", "MICRO", "--json")["models"]
    assert [m["model_name"] for m in micro] == [MICRO]
    assert micro[0]["max_context_length"] == PRESETS[MICRO].max_seq_len
    code, out, _ = cli(capsys, "models")
    assert code == 0
    assert out.splitlines()[0].split() == ["Model", "Max", "Context", "Trainable", "Sampleable"]
    assert any(line.startswith(MICRO) for line in out.splitlines())
    code, out, err = cli(capsys, "models", "no-such-model")
    assert (code, out) == (EXIT_NOT_FOUND, "")
    assert err == "tinkjax models: not_found: no model name contains 'no-such-model'\n"
    code, _, err = cli(capsys, "-f", "json", "models", "no-such-model")
    assert code == EXIT_NOT_FOUND
    assert json.loads(err) == {
        "error": {
            "kind": "not_found",
            "message": "no model name contains 'no-such-model'",
            "exit_code": EXIT_NOT_FOUND,
        }
    }


# ---------------------------------------------------------------------------- checkpoints
def test_checkpoint_writes_tinkex_metadata(saved: dict[str, Any], home: Path) -> None:
    from datetime import UTC, datetime

    from tinkjax.types import parse_tinker_path

    assert set(saved) >= {"base_model", "model_id", "weights_path", "saved_at", "response"}
    assert saved["base_model"] == MICRO
    assert saved["rank"] == 4
    parsed = parse_tinker_path(saved["weights_path"])
    assert parsed.training_run_id == saved["model_id"]
    assert parsed.checkpoint_id == "sampler_weights/checkpoint-tinkjax-bytelm-micro"
    assert saved["response"]["path"] == saved["weights_path"]
    when = datetime.strptime(saved["saved_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert abs((datetime.now(UTC) - when).total_seconds()) < 600
    assert (home / "cli-api-key").stat().st_mode & 0o777 == 0o600


def test_checkpoint_list_info_download_delete(
    saved: dict[str, Any], home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = saved["weights_path"]
    listed = cli_json(capsys, "-f", "json", "checkpoint", "list")
    assert path in [c["tinker_path"] for c in listed["checkpoints"]]
    assert listed["shown"] == len(listed["checkpoints"]) <= listed["total"]
    by_run = cli_json(capsys, "checkpoint", "list", "--run-id", saved["model_id"], "--json")
    assert by_run["run_id"] == saved["model_id"]
    assert [c["tinker_path"] for c in by_run["checkpoints"]] == [path]
    assert cli_json(capsys, "checkpoint", "list", "--limit", "1", "-f", "json")["shown"] == 1
    code, out, _ = cli(capsys, "checkpoint", "list")
    assert code == 0
    assert path in out

    info = cli_json(capsys, "checkpoint", "info", path, "-f", "json")
    assert (info["tinker_path"], info["checkpoint_type"]) == (path, "sampler")
    assert (info["base_model"], info["is_lora"], info["lora_rank"]) == (MICRO, True, 4)

    runs = cli_json(capsys, "run", "list", "--json")
    assert saved["model_id"] in [r["training_run_id"] for r in runs["runs"]]
    run = cli_json(capsys, "run", "info", saved["model_id"], "--json")
    assert (run["base_model"], run["lora_rank"]) == (MICRO, 4)
    assert cli(capsys, "run", "info", "no-such-run")[0] == EXIT_NOT_FOUND

    dl = cli_json(capsys, "checkpoint", "download", path, "-o", str(tmp_path), "-f", "json")
    dest = Path(dl["destination"])
    assert dest.parent == tmp_path
    files = sorted(p for p in dest.rglob("*") if p.is_file())
    assert [str(p.relative_to(dest)) for p in files] == dl["files"]
    assert dl["file_size_bytes"] == sum(p.stat().st_size for p in files) > 0
    code, _, err = cli(capsys, "checkpoint", "download", path, "-o", str(tmp_path))
    assert code == EXIT_USAGE
    assert "--force" in err
    assert cli(capsys, "checkpoint", "download", path, "-o", str(tmp_path), "--force")[0] == 0

    gone = cli_json(capsys, "checkpoint", "delete", path, "--yes", "-f", "json")
    assert gone == {"deleted_count": 1, "deleted": [path], "failed": []}
    code, _, err = cli(capsys, "checkpoint", "info", path)
    assert code == EXIT_NOT_FOUND
    assert err == f"tinkjax checkpoint info: not_found: checkpoint {path!r} not found\n"
    code, out, _ = cli(capsys, "checkpoint", "delete", path, "--yes", "-f", "json")
    assert code == EXIT_NOT_FOUND
    again = json.loads(out)
    assert again["deleted_count"] == 0
    assert [(f["tinker_path"], f["kind"]) for f in again["failed"]] == [(path, "not_found")]


# ---------------------------------------------------------------------------- sampling
def _check_samples(doc: dict[str, Any], n: int, max_tokens: int) -> None:
    from tinkjax.models import ByteTokenizer

    assert len(doc["sequences"]) == n
    for seq in doc["sequences"]:
        assert 1 <= len(seq["tokens"]) <= max_tokens
        assert len(seq["logprobs"]) == len(seq["tokens"])
        assert all(math.isfinite(x) and x <= 0 for x in seq["logprobs"])
        assert seq["text"] == ByteTokenizer().decode(seq["tokens"])
        assert seq["stop_reason"] in ("length", "stop")


def test_run_with_text_and_prompt_file_agree(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    common = ["--base-model", MICRO, "--max-tokens", "6", "--num-samples", "2"]
    greedy = [*common, "--temperature", "0", "--json"]
    by_text = cli_json(capsys, "run", *greedy, "--prompt", "Hi")
    _check_samples(by_text, 2, 6)
    ids = tmp_path / "ids.json"
    ids.write_text(json.dumps(list(b"Hi")))
    by_ids = cli_json(capsys, "sample", *greedy, "--prompt-file", str(ids))
    text_file = tmp_path / "prompt.txt"
    text_file.write_text("Hi")
    by_file = cli_json(  # the global -f json gives the JSON response too
        capsys, "-f", "json", "run", *common, "--temperature", "0", "--prompt-file", str(text_file)
    )
    tokens = [s["tokens"] for s in by_text["sequences"]]
    assert [s["tokens"] for s in by_ids["sequences"]] == tokens
    assert [s["tokens"] for s in by_file["sequences"]] == tokens

    out_file = tmp_path / "out" / "samples.txt"
    code, out, err = cli(capsys, "run", *common, "--prompt", "Hi", "--seed", "1", "--output",
                         str(out_file))  # fmt: skip
    assert (code, out) == (0, "")
    assert "wrote 2 sample(s)" in err
    text = out_file.read_text()
    assert text.startswith("Sample 1:\n")
    assert "\n\nSample 2:\n" in text
    assert text.count("stop_reason=") == 2


def test_run_from_saved_sampler_weights(
    saved: dict[str, Any], home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = home / "second.json"
    meta = cli_json(capsys, "checkpoint", "--base-model", MICRO, "--rank", "4", "--name",
                    "second", "--output", str(out), "--json")  # fmt: skip
    assert meta == json.loads(out.read_text())
    assert meta["weights_path"].endswith("/sampler_weights/second")
    path = meta["weights_path"]
    doc = cli_json(capsys, "run", "--model-path", path, "--prompt", "Hi", "--max-tokens", "6",
                   "--num-samples", "2", "--temperature", "0", "--json")  # fmt: skip
    _check_samples(doc, 2, 6)


# ---------------------------------------------------------------------------- a service
def test_commands_against_a_service(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tinkjax.server import start

    monkeypatch.setenv("TINKJAX_HOME", str(tmp_path / "home"))
    with start(api_keys=["tml-good"], models=[MICRO]) as handle:
        monkeypatch.setenv("TINKER_BASE_URL", handle.base_url)
        monkeypatch.setenv("TINKER_API_KEY", "tml-good")
        doc = cli_json(capsys, "models", "-f", "json")
        assert [m["model_name"] for m in doc["models"]] == [MICRO]
        assert cli_json(capsys, "checkpoint", "list", "--json")["checkpoints"] == []
        code, _, err = cli(capsys, "models", "--api-key", "tml-bad")
        assert code == EXIT_AUTH
        assert err.startswith("tinkjax models: auth: ")
    assert not (tmp_path / "home").exists()  # a service never touches the local store
