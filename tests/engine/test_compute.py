"""The entry points: a spec or the keyword options that build it, sync and async, lowering."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

import tinkjax.regularizers as R
from tinkjax.engine import (
    CustomLossResult,
    CustomLossSpec,
    EngineInputError,
    Regularizer,
    compute_custom_loss,
    compute_custom_loss_async,
    lower_custom_loss,
    prepare_custom_loss_async,
    reference_grad_norms,
)

from .data import reward_term, rl_data, step_data

REGS = [R.l1(weight=0.1, center=-0.5), R.l2(weight=0.3, target="probs"), R.entropy(weight=-0.05)]


async def _rewards(data: Any) -> dict[str, list[float]]:
    return {"reward": [float(i + 1) for i in range(len(data))]}


def _same(a: CustomLossResult, b: CustomLossResult) -> None:
    assert a.summary() == b.summary()
    for x, y in zip(a.gradients, b.gradients, strict=True):
        np.testing.assert_array_equal(x, y)


def test_entry_points_take_a_spec_or_the_options_that_build_it() -> None:
    inputs, lps = rl_data((7, 30, 1, 19), seed=3)
    options: dict[str, Any] = dict(regularizers=REGS, track_grad_norms=True, norm_method="grads")
    spec = CustomLossSpec("ppo", **options)
    by_options = compute_custom_loss(inputs, lps, "ppo", **options)
    _same(compute_custom_loss(inputs, lps, spec), by_options)
    _same(asyncio.run(compute_custom_loss_async(inputs, lps, spec)), by_options)

    async def prepared() -> CustomLossResult:
        pending = await prepare_custom_loss_async(inputs, [lp.shape for lp in lps], spec)
        return await pending.run(lps)

    _same(asyncio.run(prepared()), by_options)
    np.testing.assert_array_equal(
        reference_grad_norms(inputs, lps, spec),
        reference_grad_norms(inputs, lps, "ppo", regularizers=REGS),
    )
    lowered = lower_custom_loss(inputs, lps, spec)
    assert lowered.as_text() == lower_custom_loss(inputs, lps, "ppo", **options).as_text()
    with pytest.raises(EngineInputError, match="put them in the spec"):
        compute_custom_loss(inputs, lps, spec, track_grad_norms=False)
    with pytest.raises(EngineInputError, match="lower_custom_loss does not run prepare steps"):
        lower_custom_loss(
            inputs, lps, None, regularizers=[Regularizer("rm", reward_term, prepare=_rewards)]
        )


def test_a_bad_option_ends_the_span_it_started() -> None:
    inputs, lps = step_data()
    events: list[tuple[str, dict[str, Any]]] = []
    with pytest.raises(EngineInputError, match="norm_method"):
        compute_custom_loss(
            inputs,
            lps,
            None,
            regularizers=[R.l1(weight=1.0)],
            norm_method="jacobian",  # type: ignore[arg-type]
            emit=lambda name, m, md: events.append((name, md)),
        )
    assert [name for name, _ in events] == ["custom_loss.start", "custom_loss.exception"]
    assert events[0][1] == {"regularizer_count": 1, "track_grad_norms": False}
    assert events[1][1]["reason"] == "EngineInputError"


def test_prepare_steps_cannot_run_synchronously_inside_a_running_loop() -> None:
    inputs, lps = step_data()
    good = Regularizer("rm", reward_term, weight=1.0, prepare=_rewards)

    async def sync_inside_loop() -> None:
        compute_custom_loss(inputs, lps, None, regularizers=[good])

    with pytest.raises(RuntimeError, match="await compute_custom_loss_async"):
        asyncio.run(sync_inside_loop())
    spec = CustomLossSpec(regularizers=[good])  # the same from a spec
    assert spec.needs_prepare

    async def spec_inside_loop() -> None:
        compute_custom_loss(inputs, lps, spec)

    with pytest.raises(RuntimeError, match="await compute_custom_loss_async"):
        asyncio.run(spec_inside_loop())
