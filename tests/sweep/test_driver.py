"""Sweeps end to end on a local backend: complete tables, isolation, retries, early stops."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tinkjax import sweep
from tinkjax.client import ServiceClient

from .conftest import datums

BASE = {"regularizers": {"entropy": {"weight": 0.0}, "l2": {"weight": 0.0, "target": "probs"}}}
GRID = {"optimizer.learning_rate": [1e-3, 1e-2], "regularizers.entropy.weight": [0.0, 0.05, 0.5]}
TERMS = ("base", "entropy", "l2")


def _numbers(results: sweep.Results) -> dict[tuple[str, int], np.ndarray]:
    cols = ["loss", "total_grad_norm"] + [
        f"{t}/{c}" for t in TERMS for c in ("value", "contribution", "grad_norm")
    ]
    return {(r["run"], r["step"]): np.array([r[c] for c in cols], np.float64) for r in results}


def test_six_runs_at_once_fill_the_table_and_equal_the_runs_done_one_by_one(
    service: ServiceClient,
) -> None:
    step = sweep.supervised(datums(), batch_size=4)
    at_once = sweep.run(step, steps=2, base=BASE, grid=GRID, service=service, progress=False)
    assert at_once.status == {run_id: "completed" for run_id in at_once.status}
    assert len(at_once.status) == 6
    assert len(at_once) == 12
    for row in at_once:
        for term in TERMS:
            for col in ("value", "contribution", "grad_norm"):
                assert np.isfinite(row[f"{term}/{col}"]), (row["run"], term, col)
        assert row["learning_rate"] == row["optimizer.learning_rate"]
        assert row["entropy/contribution"] == pytest.approx(
            row["regularizers.entropy.weight"] * row["entropy/value"], rel=1e-6, abs=1e-12
        )
    # the steps changed the models: the second step's loss differs from the first's
    by_run = {r: at_once.run(r) for r in at_once.status}
    assert all(rows[0]["loss"] != rows[1]["loss"] for rows in by_run.values())
    one_by_one = sweep.run(
        step, steps=2, base=BASE, grid=GRID, service=service, max_in_flight=1, progress=False
    )
    a, b = _numbers(at_once), _numbers(one_by_one)
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=2e-5, atol=1e-6, err_msg=str(key))
    long = at_once.terms()
    assert len(long) == 12 * len(TERMS)
    assert {r["term"] for r in long} == set(TERMS)


def test_a_failing_run_is_recorded_and_the_others_finish(service: ServiceClient) -> None:
    inner = sweep.supervised(datums(), batch_size=4)

    async def step(run: sweep.Run, index: int) -> Any:
        if run.config["seed"] == 1 and index == 1:
            raise ValueError(f"boom in {run.run_id}")
        return await inner(run, index)

    results = sweep.run(step, steps=2, grid={"seed": [0, 1, 2]}, service=service, progress=False)
    failed = [r for r, s in results.status.items() if s == "failed"]
    assert len(failed) == 1
    failure = results.failures[failed[0]]
    assert failure.error == f"ValueError: boom in {failed[0]}"
    assert failure.attempts == 1
    assert sorted(results.status.values()) == ["completed", "completed", "failed"]
    assert len(results.run(failed[0])) == 1  # its first step is kept


def test_a_retried_run_resumes_from_its_checkpoint(service: ServiceClient, tmp_path: Path) -> None:
    inner = sweep.supervised(datums(), batch_size=4)
    calls: list[int] = []

    async def flaky(run: sweep.Run, index: int) -> Any:
        calls.append(index)
        if index == 2 and calls.count(2) == 1:
            raise ConnectionError("transient")
        return await inner(run, index)

    flaky.__qualname__ = "flaky"
    results = sweep.run(
        flaky, steps=3, directory=tmp_path, checkpoint_every=1, service=service, progress=False,
        retry=sweep.RetryPolicy(max_attempts=2, delay_s=0.0),
    )  # fmt: skip
    (run_id,) = results.status
    assert results.status[run_id] == "completed"
    assert calls == [0, 1, 2, 2]  # steps 0 and 1 were not recomputed
    kinds = [
        json.loads(line)["kind"] for line in (tmp_path / "results.jsonl").read_text().splitlines()
    ]
    assert kinds.count("failed") == 1
    assert kinds.count("resume") == 1
    assert [r["step"] for r in results] == [0, 1, 2]


def test_early_stop_ends_a_run_as_stopped(service: ServiceClient) -> None:
    def stop(run: sweep.Run, row: dict[str, Any]) -> bool:
        return bool(run.config["seed"] == 0 and row["step"] >= 1)

    results = sweep.run(
        sweep.supervised(datums(), batch_size=4), steps=3, grid={"seed": [0, 1]},
        service=service, early_stop=stop, progress=False,
    )  # fmt: skip
    status = {results.overrides[r]["seed"]: s for r, s in results.status.items()}
    assert status == {0: "stopped", 1: "completed"}
    counts = {results.overrides[r]["seed"]: len(results.run(r)) for r in results.status}
    assert counts == {0: 2, 1: 3}


def test_bad_definitions_are_refused_before_anything_runs(tmp_path: Path) -> None:
    step = sweep.supervised(datums(), batch_size=4)
    with pytest.raises(sweep.SweepConfigError, match=r"'optimizer\.lr' does not exist"):
        sweep.run(step, steps=1, grid={"optimizer.lr": [1.0]}, base_url="http://127.0.0.1:9")
    with pytest.raises(sweep.SweepConfigError, match="grid has no runs"):
        sweep.run(step, steps=1, grid={"seed": []}, base_url="http://127.0.0.1:9")
    with pytest.raises(sweep.SweepConfigError, match=r"steps: expected >= 1"):
        sweep.run(step, steps=0, base_url="http://127.0.0.1:9")
    (tmp_path / "sweep.json").write_text(json.dumps({"fingerprint": "other"}))
    with pytest.raises(sweep.SweepDirectoryError, match="holds a different sweep"):
        sweep.run(step, steps=1, directory=tmp_path, base_url="http://127.0.0.1:9")


def _reward(prompt: list[int], completion: list[int], config: dict[str, Any]) -> float:
    return sum(1.0 for t in completion if t == ord("e")) / max(len(completion), 1)


def test_the_rl_loop_samples_scores_and_trains(service: ServiceClient) -> None:
    step = sweep.rl(
        ["the sea ", "a light"], _reward, group_size=3, prompts_per_step=2, max_tokens=6
    )
    results = sweep.run(
        step, steps=2, base={"loss": {"name": "importance_sampling"}},
        grid={"seed": [0, 1]}, service=service,
        progress=False,
    )  # fmt: skip
    assert set(results.status.values()) == {"completed"}, results.failures
    assert len(results) == 4
    for row in results:
        assert 0.0 <= row["metric/reward_mean"] <= 1.0
        assert np.isfinite(row["loss"])
        assert np.isfinite(row["base/grad_norm"])
    # the loop refuses a loss that ignores the advantages, and that is not retried
    bad = sweep.run(
        step, steps=1, service=service, progress=False, retry=sweep.RetryPolicy(max_attempts=3)
    )
    (failure,) = bad.failures.values()
    assert failure.attempts == 1
    assert "loss.name is cross_entropy" in failure.error
