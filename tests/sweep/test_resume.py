"""Kill -9 a sweep in the middle, run it again: finished runs skipped, the others resumed from
their checkpoints, and the final table equal to an uninterrupted sweep's."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np

from tinkjax import sweep
from tinkjax.client import ServiceClient

from .conftest import datums

ROOT = Path(__file__).resolve().parents[2]
STEPS = 4
GRID = {"optimizer.learning_rate": [1e-3, 1e-2]}
BASE = {"regularizers": {"entropy": {"weight": 0.05}}}

SCRIPT = textwrap.dedent(
    f"""
    import asyncio, os, sys
    from tinkjax import sweep
    from tests.sweep.conftest import datums

    inner = sweep.supervised(datums(), batch_size=4)

    async def step(run, index):
        # first invocation: the second run's last step hangs, so the kill lands in the middle
        # (two steps in flight: the hanging step must not keep the first run from finishing)
        if os.environ.get("HANG") and run.config["optimizer"]["learning_rate"] == 1e-2:
            if index == {STEPS} - 1:
                await asyncio.sleep(600)
        return await inner(run, index)

    sweep.run(
        step, steps={STEPS}, base={BASE!r}, grid={GRID!r},
        directory=sys.argv[1], checkpoint_every=1, max_in_flight=2, base_url=sys.argv[2],
        api_key="tml-sweep-tests", progress=False,
    )
    """
)


def _records(log: Path, kind: str) -> list[dict]:
    if not log.exists():
        return []
    out = []
    for line in log.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record["kind"] == kind:
            out.append(record)
    return out


def _rows(log: Path) -> list[dict]:
    return _records(log, "row")


def _sweep_process(directory: Path, url: str, *, hang: bool) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TINKER_TELEMETRY": "0"}
    env.pop("HANG", None)
    if hang:
        env["HANG"] = "1"
    return subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(directory), url], cwd=ROOT, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip


def test_killed_sweep_resumes_to_the_uninterrupted_table(
    service: ServiceClient, sweep_server, tmp_path: Path
) -> None:
    directory = tmp_path / "killed"
    log = directory / "results.jsonl"
    proc = _sweep_process(directory, sweep_server.base_url, hang=True)
    deadline = time.monotonic() + 600
    # the first run (4 steps) finishes, the second hangs in its last step: kill it there
    while len(_rows(log)) < 2 * STEPS - 1 or not _records(log, "finished"):
        assert proc.poll() is None, proc.communicate()[0].decode()[-3000:]
        assert time.monotonic() < deadline, "the sweep made no progress"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = _rows(log)
    finished = {r["run"] for r in _records(log, "finished")}
    assert len(finished) == 1
    assert sum(1 for r in before if r["run"] in finished) == STEPS
    assert len(before) == 2 * STEPS - 1

    # run the same sweep again, to the end
    again = _sweep_process(directory, sweep_server.base_url, hang=False)
    out = again.communicate(timeout=600)[0].decode()
    assert again.returncode == 0, out[-3000:]
    after = _rows(log)
    # nothing of the finished run was recomputed
    assert [r for r in after if r["run"] in finished] == [r for r in before if r["run"] in finished]
    # the other run resumed from its checkpoint after step 2: only step 3 was run again
    other_before = [r for r in before if r["run"] not in finished]
    other_after = [r for r in after if r["run"] not in finished]
    assert [r["step"] for r in other_before] == [0, 1, 2]
    assert other_after[:3] == other_before
    assert [r["step"] for r in other_after[3:]] == [3]

    resumed = sweep.load(directory)
    assert set(resumed.status.values()) == {"completed"}
    reference = sweep.run(
        sweep.supervised(datums(), batch_size=4), steps=STEPS, base=BASE, grid=GRID,
        directory=tmp_path / "reference", checkpoint_every=1, max_in_flight=2, service=service,
        progress=False,
    )  # fmt: skip
    assert len(resumed) == len(reference) == 2 * STEPS
    for got, want in zip(resumed, reference, strict=True):
        assert (got["run"], got["step"]) == (want["run"], want["step"])
        # steps of both runs may share a fused server call: equal up to its rounding
        for col in ("loss", "entropy/value", "entropy/grad_norm", "total_grad_norm"):
            np.testing.assert_allclose(
                got[col], want[col], rtol=2e-5, atol=1e-6, err_msg=f"{got['run']} {col}"
            )
