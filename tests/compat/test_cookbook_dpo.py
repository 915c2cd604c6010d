"""tinker-cookbook's DPO (``tinker_cookbook.preference.train_dpo``), unchanged, against the
local backend: its torch loss runs through the official SDK's ``forward_backward_custom``
(forward, torch autograd, linearised backward on the server), with reference logprobs from
``compute_logprobs``; the DPO loss falls and the preference accuracy rises."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("tinker_cookbook")
pytest.importorskip("chz")
pytest.importorskip("torch")

from .cookbook_runs import metrics

SCRIPT = Path(__file__).with_name("cookbook_runs.py")


def test_dpo_loss_falls(local_server: Any, tmp_path: Path) -> None:
    env = {**os.environ, "TINKER_API_KEY": "tml-compat-dpo", "TINKER_TELEMETRY": "0"}
    log = tmp_path / "dpo"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "dpo", local_server.base_url, str(log)],
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    rows = [r for r in metrics(log) if "dpo_loss" in r]
    assert len(rows) == 6, rows  # 8 pairs, 2 per batch... 4 datums a batch, 3 epochs
    losses = [r["dpo_loss"] for r in rows]
    assert losses[0] == pytest.approx(0.6931, abs=0.02)  # log 2: policy = reference at first
    assert max(losses[-2:]) < losses[0] - 0.05, losses
    assert rows[-1]["accuracy"] >= rows[0]["accuracy"], rows
