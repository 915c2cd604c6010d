"""``tinkjax sweep CONFIG.toml``: the same sweep as the API, refusals before anything runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tinkjax.cli import main
from tinkjax.cli._sweep import load_config
from tinkjax.sweep import SweepConfigError

from .conftest import TEXT


def _write(tmp_path: Path, body: str) -> Path:
    (tmp_path / "corpus.txt").write_bytes(TEXT)
    path = tmp_path / "lr.toml"
    path.write_text(body)
    return path


CONFIG = """
steps = 2
checkpoint_every = 1
base_url = "{url}"

[loop]
kind = "supervised"
text = "corpus.txt"
seq_len = 24
batch_size = 4

[base.regularizers.entropy]
weight = 0.01

[grid]
"optimizer.learning_rate" = [1e-3, 1e-2]
"""


def test_the_command_runs_and_resumes_the_sweep(
    tmp_path: Path,
    sweep_server,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("TINKER_API_KEY", "tml-sweep-tests")
    path = _write(tmp_path, CONFIG.format(url=sweep_server.base_url))
    assert main(["sweep", str(path), "--no-progress"]) == 0
    assert "2 runs: 2 completed" in capsys.readouterr().out
    log = tmp_path / "lr" / "results.jsonl"
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert sum(1 for r in rows if r["kind"] == "row") == 4
    # again: everything is finished, nothing runs, nothing is appended
    assert main(["sweep", str(path), "--no-progress"]) == 0
    assert len(log.read_text().splitlines()) == len(rows)


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ("steps = 1\nstep = 3\n", r"unknown keys \['step'\]"),
        ("[loop]\nkind = 'supervised'\ntext = 'corpus.txt'\n", r"'steps' is required"),
        ("steps = 1\n[loop]\nkind = 'supervised'\n", r"exactly one of text, dataset"),
        (
            "steps = 1\n[loop]\nkind = 'supervised'\ntext = 'missing.txt'\n",
            r"loop.text: no such file",
        ),
        (
            "steps = 1\n[loop]\nkind = 'nosuchmodule:f'\n",
            r"loop.kind: cannot import 'nosuchmodule:f'",
        ),
        ("steps = 1\n[loop]\ntext = 'corpus.txt'\n[retry]\ntries = 2\n", r"\[retry\]: .*tries"),
        ("steps = [\n", r"lr.toml: "),
    ],
)
def test_bad_files_are_refused_naming_the_key(tmp_path: Path, body: str, match: str) -> None:
    with pytest.raises(SweepConfigError, match=match):
        load_config(_write(tmp_path, body))


def test_a_bad_leaf_exits_2_with_the_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    body = "steps = 1\nbase_url = 'http://127.0.0.1:9'\n[loop]\ntext = 'corpus.txt'\n[grid]\n'lora.rnk' = [4]\n"
    assert main(["sweep", str(_write(tmp_path, body)), "--no-progress"]) == 2
    assert "config leaf 'lora.rnk' does not exist" in capsys.readouterr().err
