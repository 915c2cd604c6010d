"""Regularizers' async ``prepare`` steps: their results reach the program; failures name them."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pytest

import tinkjax.regularizers as R
from tinkjax.engine import (
    Regularizer,
    RegularizerError,
    compute_custom_loss,
    compute_custom_loss_async,
)

from .data import STEP_LENGTHS, reward_term, step_data


async def _rewards(data: Sequence[Mapping[str, np.ndarray]]) -> dict[str, list[float]]:
    await asyncio.sleep(0.01)
    return {"reward": [float(i + 1) for i in range(len(data))]}


async def _slow(data: Sequence[Any]) -> dict[str, list[float]]:
    await asyncio.sleep(5.0)
    return {}


async def _failing(data: Sequence[Any]) -> dict[str, list[float]]:
    raise ConnectionError("reward model unreachable")


def test_async_prepare_feeds_the_program() -> None:
    inputs, lps = step_data()
    reg = Regularizer("rm", reward_term, weight=2.0, prepare=_rewards)
    result = compute_custom_loss(inputs, lps, None, regularizers=[reg])
    want = sum((i + 1) * lp.astype(np.float64).sum() for i, lp in enumerate(lps))
    assert result.regularizers["rm"].value == pytest.approx(want, rel=1e-5)
    np.testing.assert_allclose(result.gradients[2], np.full(STEP_LENGTHS[2], 2.0 * 3.0))
    # with norms, next to a regularizer of another kind and one of the same function
    regs = [R.l2(weight=1.0), reg, Regularizer("rm2", reward_term, weight=0.5, prepare=_rewards)]
    want_norm = np.sqrt(sum((i + 1) ** 2 * n for i, n in enumerate(STEP_LENGTHS)))
    for method in ("grads", "vmap"):
        tracked = compute_custom_loss(
            inputs, lps, None, regularizers=regs, track_grad_norms=True, norm_method=method
        )
        for name in ("rm", "rm2"):
            assert tracked.regularizers[name].grad_norm == pytest.approx(want_norm, rel=1e-5)
            assert tracked.regularizers[name].value == pytest.approx(want, rel=1e-5)
        np.testing.assert_allclose(tracked.gradients[2], 2.0 * lps[2] + 2.5 * 3.0, rtol=1e-5)


def test_async_prepare_failure_and_timeout_name_the_regularizer() -> None:
    inputs, lps = step_data()
    good = Regularizer("rm", reward_term, weight=1.0, prepare=_rewards)
    slow = Regularizer("slow_rm", reward_term, weight=1.0, prepare=_slow, prepare_timeout=0.05)
    failing = Regularizer("db", reward_term, weight=1.0, prepare=_failing)
    events: list[str] = []

    async def run(regs: list[Regularizer]) -> Any:
        return await compute_custom_loss_async(
            inputs, lps, None, regularizers=regs, emit=lambda n, m, d: events.append(n)
        )

    with pytest.raises(
        RegularizerError, match=r"regularizer 'slow_rm': prepare timed out after 0\.05 s"
    ) as info:
        asyncio.run(run([good, slow]))
    assert info.value.name == "slow_rm"
    with pytest.raises(
        RegularizerError, match="'db': prepare failed: ConnectionError: reward model unreachable"
    ):
        compute_custom_loss(inputs, lps, None, regularizers=[failing])
    assert events == ["custom_loss.start", "custom_loss.exception"]
