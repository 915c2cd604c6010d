"""The scripts in examples/ run (shortened) and do what they say.

Every ``examples/[!_]*.py`` runs here in process through its ``main()`` (the small settings of
:data:`SMALL`), on the embedded backend the whole test process shares; each example checks its
own result and raises if it is wrong. ``examples/run_all.sh`` (the same scripts as separate
processes) is checked with a stand-in interpreter.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
#: examples with a test of their own (below, or tests/test_examples_telemetry.py)
DEDICATED = {
    "rl_custom_loss", "official_sdk_local",
    "telemetry_live", "telemetry_reporter", "retry_and_capture",
}  # fmt: skip
#: small settings, so the whole file stays fast
SMALL: dict[str, dict[str, Any]] = {
    "training_loop": {"steps": 4},
    "structured_regularizers_live": {"steps": 2},
    "sampling_basic": {"max_tokens": 6, "num_samples": 2},
    "async_client_creation": {"n_samplers": 2},
    "cli_run_text": {"max_tokens": 6},
    "cli_run_prompt_file": {"max_tokens": 6},
}
SCRIPTS = sorted(p.stem for p in EXAMPLES.glob("[!_]*.py"))


def _load(name: str) -> ModuleType:
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))  # the examples import their _shared helpers
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for var in ("TINKER_API_KEY", "TINKER_BASE_URL", "TINKJAX_EXAMPLE_MODEL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("TINKJAX_HOME", str(tmp_path / "home"))
    return tmp_path


@pytest.mark.parametrize("name", [s for s in SCRIPTS if s not in DEDICATED])
def test_example_checks_its_own_result(
    name: str, offline: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kwargs = dict(SMALL.get(name, {}))
    if name == "checkpoint_download":
        kwargs["output_dir"] = str(offline / "download")
    module = _load(name)
    assert callable(getattr(module, "main", None)), f"{name}.py has no main()"
    module.main(**kwargs)  # raises if the example's own checks fail
    assert capsys.readouterr().out.strip(), f"{name}.py printed nothing"


def test_every_example_has_a_readme_line() -> None:
    readme = (EXAMPLES / "README.md").read_text()
    for name in SCRIPTS:
        assert f"`{name}.py`" in readme, f"examples/README.md does not describe {name}.py"


def test_run_all_runs_every_example_and_fails_if_one_fails(tmp_path: Path) -> None:
    log = tmp_path / "ran.txt"
    fake = tmp_path / "python"
    fake.write_text(
        "#!/usr/bin/env bash\n"
        f'echo "$1" >> {log}\n'
        'case "$1" in *sampling_basic.py) exit 3 ;; esac\n'
    )
    fake.chmod(0o755)
    proc = subprocess.run(
        ["bash", str(EXAMPLES / "run_all.sh")], capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHON": str(fake)},
    )  # fmt: skip
    ran = log.read_text().split()
    assert ran == [f"examples/{s}.py" for s in SCRIPTS]
    assert proc.returncode == 1
    assert "--- FAILED: examples/sampling_basic.py (exit 3)" in proc.stdout
    assert f"1 of {len(SCRIPTS)} examples failed: examples/sampling_basic.py" in proc.stdout
    log.unlink()
    fake.write_text(f'#!/usr/bin/env bash\necho "$1" >> {log}\n')
    ok = subprocess.run(
        ["bash", str(EXAMPLES / "run_all.sh")], capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHON": str(fake)},
    )  # fmt: skip
    assert ok.returncode == 0
    assert f"all {len(SCRIPTS)} examples passed" in ok.stdout


def test_rl_custom_loss_runs_and_reports_every_term(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for var in ("TINKER_API_KEY", "TINKER_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    rewards = _load("rl_custom_loss").main(steps=3)
    assert len(rewards) == 3
    assert all(0.0 <= r <= 1.0 for r in rewards)
    out = capsys.readouterr().out
    for term in ("kl", "entropy", "reward_model"):
        assert term in out


def test_official_sdk_against_the_local_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TINKER_BASE_URL", raising=False)
    monkeypatch.setenv("TINKER_API_KEY", "tml-example")
    losses = _load("official_sdk_local").main(steps=4)
    assert len(losses) == 4
    assert losses[-1] < losses[0]
