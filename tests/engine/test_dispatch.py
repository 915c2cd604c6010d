"""One dispatch for many runs: steps ready together are stacked into one vmapped program whose
per-run results are those of separate calls, with compiles counted per plan and bucket."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

import tinkjax.regularizers as R
from tinkjax.engine import CustomLossResult, CustomLossSpec, compute_custom_loss, trace_count
from tinkjax.engine import compute_custom_loss_async as compute_async
from tinkjax.engine._dispatch import RUN_BUCKETS, dispatch_key, run_together
from tinkjax.engine._step import build_step

from .data import step_data


def _spec(i: int, *, norms: bool = True) -> CustomLossSpec:
    # one structure for every run; weights and parameters differ (traced: same program)
    return CustomLossSpec(
        "cross_entropy",
        regularizers=[
            R.l1(weight=0.1 * (i + 1), center=-0.1 * i),
            R.entropy(weight=0.01 * i),
            R.l2(weight=0.5 / (i + 1), target="probs"),
        ],
        track_grad_norms=norms,
    )


def _run_data(i: int) -> tuple[list[dict[str, np.ndarray]], list[np.ndarray]]:
    inputs, lps = step_data()
    rng = np.random.default_rng(100 + i)
    return inputs, [(lp - rng.exponential(size=lp.shape)).astype(np.float32) for lp in lps]


def _same(got: CustomLossResult, want: CustomLossResult) -> None:
    assert got.loss_total == pytest.approx(want.loss_total, rel=1e-6)
    assert got.base_loss == pytest.approx(want.base_loss, rel=1e-6)
    assert got.total_grad_norm == pytest.approx(want.total_grad_norm, rel=1e-6)
    if want.base_grad_norm is None:
        assert got.base_grad_norm is None
    else:
        assert got.base_grad_norm == pytest.approx(want.base_grad_norm, rel=1e-6)
    for name, reg in want.regularizers.items():
        mine = got.regularizers[name]
        assert mine.value == pytest.approx(reg.value, rel=1e-6, abs=1e-9), name
        assert mine.contribution == pytest.approx(reg.contribution, rel=1e-6, abs=1e-9), name
        if reg.grad_norm is None:
            assert mine.grad_norm is None
        else:
            assert mine.grad_norm == pytest.approx(reg.grad_norm, rel=1e-6, abs=1e-9), name
    for g, w in zip(got.gradients, want.gradients, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("norms", [True, False])
def test_runs_ready_together_are_one_dispatch_with_the_results_of_separate_calls(
    norms: bool,
) -> None:
    runs = 16
    data = [_run_data(i) for i in range(runs)]
    specs = [_spec(i, norms=norms) for i in range(runs)]
    separate = [
        compute_custom_loss(inp, lps, spec) for (inp, lps), spec in zip(data, specs, strict=True)
    ]

    async def together(weights_from: int) -> list[CustomLossResult]:
        return await asyncio.gather(
            *(
                compute_async(inp, lps, _spec(weights_from + i, norms=norms))
                for i, (inp, lps) in enumerate(data)
            )
        )

    before = trace_count()
    stacked = asyncio.run(together(0))
    first = trace_count() - before
    assert first <= 1  # one stacked program for 16 runs (0 when an earlier test compiled it)
    for got, want in zip(stacked, separate, strict=True):
        _same(got, want)
    # other weights and parameters: nothing compiles
    before = trace_count()
    asyncio.run(together(3))
    assert trace_count() == before


def test_the_run_count_is_padded_to_a_bucket() -> None:
    data = [_run_data(i) for i in range(5)]
    steps = [build_step(_spec(i), inp, lps, {}) for i, (inp, lps) in enumerate(data)]
    assert len({dispatch_key(s) for s in steps}) == 1
    outs = run_together(steps)
    assert len(outs) == 5
    for step, out in zip(steps, outs, strict=True):
        single = step.run()
        np.testing.assert_allclose(out["grad"], single["grad"], rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(out["total"], single["total"], rtol=1e-6)
    before = trace_count()
    run_together(steps[:3])  # 3 and 5 runs both pad to... 4 and 8: the 8-run program is cached
    run_together(steps[:5])
    assert trace_count() - before <= 1
    assert tuple(sorted(RUN_BUCKETS)) == RUN_BUCKETS


def test_steps_of_different_shapes_are_not_stacked() -> None:
    inputs, lps = step_data()
    a = build_step(_spec(0), inputs, lps, {})
    long_inputs = [{k: np.tile(v, 40) for k, v in d.items()} for d in inputs]
    b = build_step(_spec(0), long_inputs, [np.tile(lp, 40) for lp in lps], {})  # another bucket
    c = build_step(_spec(0, norms=False), inputs, lps, {})
    assert dispatch_key(a) != dispatch_key(b)
    assert dispatch_key(a) != dispatch_key(c)
