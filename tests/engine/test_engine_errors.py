"""Failure paths: non-finite terms, bad specs and data, async prepare steps; events."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tinkjax.regularizers as R
from tinkjax.engine import (
    EngineInputError,
    LossBatch,
    NonFiniteError,
    PackedLoss,
    Regularizer,
    RegularizerError,
    compute_custom_loss,
    compute_custom_loss_async,
)

LENGTHS = (6, 40, 11)


def _data() -> tuple[list[dict[str, np.ndarray]], list[np.ndarray]]:
    rng = np.random.default_rng(5)
    lps = [-rng.exponential(size=n).astype(np.float32) for n in LENGTHS]
    inputs = [
        {"target_tokens": np.zeros(n, np.int64), "weights": np.ones(n, np.float32)} for n in LENGTHS
    ]
    return inputs, lps


def log_of_neg_lp_at_datum_1(batch: LossBatch, lp: jax.Array) -> jax.Array:
    """sqrt(-lp) on datum 1 with one logprob set to 0: finite value, infinite gradient."""
    on_datum_1 = batch.segment_ids == 1
    return batch.token_sum(jnp.where(on_datum_1, jnp.sqrt(-lp), 0.0))


def nan_value(batch: LossBatch, lp: jax.Array, *, scale: jax.Array) -> jax.Array:
    return batch.token_sum(lp) * scale + jnp.log(scale - 1.0)


def test_non_finite_gradient_names_regularizer_and_datum() -> None:
    inputs, lps = _data()
    lps[1][3] = 0.0
    regs = [R.l2(weight=1.0), Regularizer("sqrt", log_of_neg_lp_at_datum_1, weight=0.5)]
    events: list[tuple[str, dict[str, float], dict[str, Any]]] = []
    with pytest.raises(
        NonFiniteError, match=r"regularizer 'sqrt' has a non-finite gradient at datum 1"
    ) as info:
        compute_custom_loss(
            inputs, lps, "cross_entropy", regularizers=regs, emit=lambda *e: events.append(e)
        )
    assert (info.value.term, info.value.datum) == ("sqrt", 1)
    assert [e[0] for e in events] == ["custom_loss.start", "custom_loss.exception"]
    assert events[1][2]["term"] == "sqrt"
    assert events[1][2]["reason"] == "NonFiniteError"


def test_non_finite_value_names_regularizer() -> None:
    inputs, lps = _data()
    reg = Regularizer("logscale", nan_value, weight=1.0, params={"scale": 0.5})
    with pytest.raises(
        NonFiniteError, match="regularizer 'logscale' has a non-finite value"
    ) as info:
        compute_custom_loss(inputs, lps, "cross_entropy", regularizers=[reg], track_grad_norms=True)
    assert info.value.datum is None
    ok = compute_custom_loss(
        inputs, lps, "cross_entropy", regularizers=[reg.with_params(scale=3.0)]
    )
    assert np.isfinite(ok.loss_total)


def test_spec_validation_errors_name_the_regularizer() -> None:
    with pytest.raises(EngineInputError, match="regularizer 'x': weight must be finite"):
        Regularizer("x", nan_value, weight=float("inf"))
    with pytest.raises(EngineInputError, match="regularizer 'x': weight must be a float"):
        Regularizer("x", nan_value, weight=True)
    with pytest.raises(EngineInputError, match="parameter 'scale' is not finite"):
        Regularizer("x", nan_value, params={"scale": np.nan})
    with pytest.raises(EngineInputError, match="unknown parameters"):
        Regularizer("x", nan_value, params={"scale": 1.0}).with_params(sclae=2.0)
    with pytest.raises(EngineInputError, match="reduction must be one of"):
        R.l1(weight=1.0, reduction="median")  # type: ignore[arg-type]
    inputs, lps = _data()
    with pytest.raises(EngineInputError, match="duplicate regularizer name 'l1'"):
        compute_custom_loss(inputs, lps, None, regularizers=[R.l1(weight=1.0), R.l1(weight=2.0)])
    with pytest.raises(
        EngineInputError, match=r"regularizer 'kl' requires loss inputs \['reference_logprobs'\]"
    ):
        compute_custom_loss(inputs, lps, None, regularizers=[R.kl(weight=1.0)])
    with pytest.raises(
        EngineInputError, match=r"base loss requires loss inputs \['logprobs', 'advantages'\]"
    ):
        compute_custom_loss(inputs, lps, "ppo")
    with pytest.raises(EngineInputError, match="unknown key"):
        compute_custom_loss(inputs, lps, "ppo", loss_fn_config={"clip": 1.0})
    with pytest.raises(EngineInputError, match="must be a scalar, got shape"):
        compute_custom_loss(inputs, lps, PackedLoss(lambda batch, lp: lp))


def test_specs_hash_on_structure_not_on_weights() -> None:
    a = R.l1(weight=1.0, center=0.0)
    b = R.l1(weight=5.0, center=-3.0)
    assert a == b
    assert hash(a) == hash(b)
    assert a != R.l1(weight=1.0, target="probs")
    assert a != R.l1(weight=1.0, name="other")


def test_events_report_each_regularizer() -> None:
    inputs, lps = _data()
    events: list[tuple[str, dict[str, float], dict[str, Any]]] = []

    def broken(name: str, measurements: dict[str, float], metadata: dict[str, Any]) -> None:
        events.append((name, measurements, metadata))
        raise RuntimeError("handler bug")  # logged, never raised into the step

    result = compute_custom_loss(
        inputs,
        lps,
        "cross_entropy",
        track_grad_norms=True,
        regularizers=[R.l1(weight=0.5), R.entropy(weight=-1.0)],
        emit=broken,
    )
    names = [e[0] for e in events]
    assert names == [
        "custom_loss.start",
        "regularizer.compute",
        "regularizer.compute",
        "custom_loss.stop",
    ]
    l1_event = events[1]
    assert l1_event[2] == {"regularizer_name": "l1", "weight": 0.5}
    assert l1_event[1]["contribution"] == pytest.approx(result.regularizers["l1"].contribution)
    assert l1_event[1]["grad_norm"] == result.regularizers["l1"].grad_norm
    assert events[3][1]["loss_total"] == result.loss_total
    assert events[0][2] == {"regularizer_count": 2, "track_grad_norms": True}


def reward_term(batch: LossBatch, lp: jax.Array, *, reward: jax.Array) -> jax.Array:
    return batch.token_sum(batch.per_token(reward) * lp)


async def _rewards(data: Sequence[Mapping[str, np.ndarray]]) -> dict[str, list[float]]:
    await asyncio.sleep(0.01)
    return {"reward": [float(i + 1) for i in range(len(data))]}


async def _slow(data: Sequence[Any]) -> dict[str, list[float]]:
    await asyncio.sleep(5.0)
    return {}


async def _failing(data: Sequence[Any]) -> dict[str, list[float]]:
    raise ConnectionError("reward model unreachable")


def test_async_prepare_feeds_the_kernel() -> None:
    inputs, lps = _data()
    reg = Regularizer("rm", reward_term, weight=2.0, prepare=_rewards)
    result = compute_custom_loss(inputs, lps, None, regularizers=[reg])
    want = sum((i + 1) * lp.astype(np.float64).sum() for i, lp in enumerate(lps))
    assert result.regularizers["rm"].value == pytest.approx(want, rel=1e-5)
    np.testing.assert_allclose(result.gradients[2], np.full(LENGTHS[2], 2.0 * 3.0))
    # with norms, next to a regularizer of another kind and one of the same function
    regs = [R.l2(weight=1.0), reg, Regularizer("rm2", reward_term, weight=0.5, prepare=_rewards)]
    want_norm = np.sqrt(sum((i + 1) ** 2 * n for i, n in enumerate(LENGTHS)))
    for method in ("grads", "vmap"):
        tracked = compute_custom_loss(
            inputs, lps, None, regularizers=regs, track_grad_norms=True, norm_method=method
        )
        for name in ("rm", "rm2"):
            assert tracked.regularizers[name].grad_norm == pytest.approx(want_norm, rel=1e-5)
            assert tracked.regularizers[name].value == pytest.approx(want, rel=1e-5)
        np.testing.assert_allclose(tracked.gradients[2], 2.0 * lps[2] + 2.5 * 3.0, rtol=1e-5)


def test_async_prepare_failure_and_timeout_name_the_regularizer() -> None:
    inputs, lps = _data()
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

    async def sync_inside_loop() -> None:
        compute_custom_loss(inputs, lps, None, regularizers=[good])

    with pytest.raises(RuntimeError, match="await compute_custom_loss_async"):
        asyncio.run(sync_inside_loop())
