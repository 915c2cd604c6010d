"""The scripts in examples/ run (shortened) and do what they say."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


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
