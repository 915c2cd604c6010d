"""The telemetry examples (examples/telemetry_live.py, telemetry_reporter.py,
retry_and_capture.py) run on the embedded backend and pass their own checks."""

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


@pytest.fixture
def embedded(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("TINKER_API_KEY", "TINKER_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("TINKER_TELEMETRY", "1")


@pytest.mark.usefixtures("embedded")
def test_telemetry_live_samples_and_the_backend_has_the_session() -> None:
    result = _load("telemetry_live").main(max_tokens=4)
    assert result["telemetry"] is True
    assert result["tokens"] == 4
    assert result["backend_events"] == result["sent"] >= 5


@pytest.mark.usefixtures("embedded")
def test_telemetry_live_with_the_kill_switch_sends_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TINKER_TELEMETRY", "0")
    result = _load("telemetry_live").main(max_tokens=2)
    assert result == {"tokens": 2, "telemetry": False}


@pytest.mark.usefixtures("embedded")
def test_telemetry_reporter_retries_drains_and_shuts_down() -> None:
    result = _load("telemetry_reporter").main(n_events=120)
    assert result == {"telemetry": True, "sent": 123, "retried": 2, "backend_events": 123}


@pytest.mark.usefixtures("embedded")
def test_retry_and_capture_retries_reports_and_reraises() -> None:
    result = _load("retry_and_capture").main(failures=3)
    assert result["retries"] == 3
    assert result["not_retried"] == "NotFoundError"
    assert result["reported"] == 2
