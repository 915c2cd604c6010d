"""tinker-cookbook's supervised training (``tinker_cookbook.supervised.train``), unchanged,
against the local backend: the loss falls, and a run killed mid-way (SIGKILL, after its first
checkpoint) resumes from that checkpoint and finishes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("tinker_cookbook")
pytest.importorskip("chz")
pytest.importorskip("torch")

from .cookbook_runs import metrics

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("cookbook_runs.py")


def _env(base_url: str) -> dict[str, str]:
    return {**os.environ, "TINKER_API_KEY": "tml-compat-sft", "TINKER_TELEMETRY": "0",
            "TINKER_BASE_URL": base_url}  # fmt: skip


def _run(base_url: str, log_path: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), "sft", base_url, str(log_path)],
        cwd=ROOT,
        env=_env(base_url),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def _nll(rows: list[dict[str, Any]]) -> list[float]:
    return [r["train_mean_nll"] for r in rows if "train_mean_nll" in r]


def test_supervised_training_resumes_after_a_kill_and_the_loss_falls(
    local_server: Any, tmp_path: Path
) -> None:
    log = tmp_path / "sft"
    first = _run(local_server.base_url, log)
    checkpoints = log / "checkpoints.jsonl"
    deadline = time.monotonic() + 240
    while not (checkpoints.exists() and checkpoints.read_text().strip()):
        assert first.poll() is None, first.stdout.read().decode()[-3000:] if first.stdout else ""
        assert time.monotonic() < deadline, "no checkpoint within 240 s"
        time.sleep(0.2)
    first.kill()  # SIGKILL: no cleanup, as a crash
    first.wait()
    done_before = len(_nll(metrics(log)))
    assert done_before < 8

    second = _run(local_server.base_url, log)
    out, _ = second.communicate(timeout=400)
    text = out.decode()
    assert second.returncode == 0, text[-3000:]
    assert "Resum" in text, text[-3000:]
    rows = metrics(log)
    steps = [r["step"] for r in rows if "train_mean_nll" in r]
    assert steps == sorted(set(steps)), steps  # every step once
    assert steps[-1] == 7, steps  # to the end
    nll = _nll(rows)
    assert max(nll[-2:]) < 0.6 * nll[0], nll
    final = [line for line in checkpoints.read_text().splitlines() if '"final"' in line]
    assert final, checkpoints.read_text()
