"""The engine program: base losses, gradients, per-term gradient norms, and compile once.

Values are checked against NumPy float64 formulas, gradients against float64 central finite
differences of those formulas (under x64), norms against separate gradients and ``jacrev``.
A stream of ragged batches compiles once per bucket; weights and parameters never recompile.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tinkjax.regularizers as R
from tinkjax.engine import (
    Bucketing,
    DatumLoss,
    LossBatch,
    Regularizer,
    compute_custom_loss,
    pack_inputs,
    reference_grad_norms,
    trace_count,
)

from .data import Inputs, rl_data, stream_batch

LENGTHS = (7, 30, 1, 19)


def _cat(inputs: Inputs, key: str) -> np.ndarray:
    return np.concatenate([np.asarray(d[key], np.float64) for d in inputs])


def _ppo_ref(lp: np.ndarray, q: np.ndarray, a: np.ndarray, cfg: dict[str, float]) -> float:
    r = np.exp(lp - q)
    lo, hi = cfg.get("clip_low_threshold", 0.8), cfg.get("clip_high_threshold", 1.2)
    return float(-np.minimum(r * a, np.clip(r, lo, hi) * a).sum())


RefFn = Callable[[np.ndarray, Inputs, dict[str, float]], float]


BASE_REFS: dict[str, RefFn] = {
    "cross_entropy": lambda lp, d, c: float(-(lp * _cat(d, "weights")).sum()),
    "importance_sampling": lambda lp, d, c: float(
        -(np.exp(lp - _cat(d, "logprobs")) * _cat(d, "advantages")).sum()
    ),
    "ppo": lambda lp, d, c: _ppo_ref(lp, _cat(d, "logprobs"), _cat(d, "advantages"), c),
    "cispo": lambda lp, d, c: float(
        -(np.clip(np.exp(lp - _cat(d, "logprobs")), 0.8, 1.2) * lp * _cat(d, "advantages")).sum()
    ),
    "dro": lambda lp, d, c: float(
        -(lp * _cat(d, "advantages") - 0.5 * c["beta"] * (lp - _cat(d, "logprobs")) ** 2).sum()
    ),
}


CONFIGS: dict[str, dict[str, float]] = {"dro": {"beta": 0.7}, "ppo": {"clip_high_threshold": 1.3}}


def central_differences(
    f: Callable[[np.ndarray], float], x: np.ndarray, h: float = 1e-6
) -> np.ndarray:
    grad = np.zeros_like(x)
    for i in range(x.size):
        e = np.zeros_like(x)
        e.flat[i] = h
        grad.flat[i] = (f(x + e) - f(x - e)) / (2 * h)
    return grad


@pytest.mark.parametrize("loss", sorted(BASE_REFS))
def test_base_loss_value_float32(loss: str) -> None:
    inputs, lps = rl_data(LENGTHS)
    cfg = CONFIGS.get(loss, {})
    result = compute_custom_loss(inputs, lps, loss, loss_fn_config=cfg)
    lp64 = np.concatenate(lps).astype(np.float64)
    want = BASE_REFS[loss](lp64, inputs, cfg)
    np.testing.assert_allclose(result.loss_total, want, rtol=2e-5)
    np.testing.assert_allclose(result.metrics["loss:sum"], want, rtol=2e-5)
    assert result.regularizer_total == 0.0
    assert result.base_grad_norm is None
    assert [g.dtype for g in result.gradients] == [np.float32] * len(LENGTHS)


@pytest.mark.parametrize("loss", sorted(BASE_REFS))
def test_base_loss_gradient_float64_finite_differences(loss: str) -> None:
    cfg = CONFIGS.get(loss, {})
    with jax.enable_x64(True):
        inputs, lps = rl_data(LENGTHS, dtype=np.float64)
        result = compute_custom_loss(
            inputs, lps, loss, loss_fn_config=cfg, dtype=np.float64, track_grad_norms=True
        )
    lp = np.concatenate(lps)
    if loss == "cispo":  # the clipped ratio is a stop-gradient weight: compare analytically
        want = -np.clip(np.exp(lp - _cat(inputs, "logprobs")), 0.8, 1.2) * _cat(
            inputs, "advantages"
        )
    else:
        want = central_differences(lambda x: BASE_REFS[loss](x, inputs, cfg), lp)
    got = np.concatenate(result.gradients)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-8)
    assert result.base_grad_norm == pytest.approx(np.linalg.norm(want), rel=1e-7)
    assert result.total_grad_norm == pytest.approx(np.linalg.norm(want), rel=1e-7)


def _regs() -> list[Any]:
    return [
        R.l1(weight=0.1, center=-0.5, name="l1a"),
        R.l1(weight=0.2, center=-1.0, name="l1b"),
        R.l2(weight=0.3, target="probs"),
        R.entropy(weight=-0.05),
        R.sequence_variance(weight=2.0),
    ]


def test_grad_norms_match_separate_grads_vmap_and_jacrev() -> None:
    inputs, lps = rl_data(LENGTHS, seed=1)
    regs = _regs()
    by_grads = compute_custom_loss(inputs, lps, "ppo", regularizers=regs, track_grad_norms=True)
    by_vmap = compute_custom_loss(
        inputs, lps, "ppo", regularizers=regs, track_grad_norms=True, norm_method="vmap"
    )
    plain = compute_custom_loss(inputs, lps, "ppo", regularizers=regs)
    jac = reference_grad_norms(inputs, lps, "ppo", regularizers=regs)
    norms = [by_grads.base_grad_norm, *(r.grad_norm for r in by_grads.regularizers.values())]
    np.testing.assert_allclose(norms, jac, rtol=1e-5)
    vnorms = [by_vmap.base_grad_norm, *(r.grad_norm for r in by_vmap.regularizers.values())]
    np.testing.assert_allclose(vnorms, jac, rtol=1e-5)
    # each regularizer alone, weight 1, no base: its total gradient is its own gradient
    for reg, norm in zip(regs, norms[1:], strict=True):
        alone = compute_custom_loss(inputs, lps, None, regularizers=[reg.with_weight(1.0)])
        assert alone.total_grad_norm == pytest.approx(norm, rel=1e-5), reg.name
        assert alone.base_loss == 0.0
    for other in (by_vmap, plain):
        assert other.loss_total == pytest.approx(by_grads.loss_total, rel=1e-6)
        for a, b in zip(other.gradients, by_grads.gradients, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert plain.total_grad_norm == pytest.approx(by_grads.total_grad_norm, rel=1e-5)
    assert all(r.grad_norm is None for r in plain.regularizers.values())
    total = by_grads.base_loss + sum(r.weight * r.value for r in by_grads.regularizers.values())
    assert by_grads.loss_total == pytest.approx(total, rel=1e-6)
    assert by_grads.regularizers["l1b"].contribution == pytest.approx(
        0.2 * by_grads.regularizers["l1b"].value
    )


def _shifted_max(batch: LossBatch, lp: jax.Array, *, shift: jax.Array) -> Any:
    x = jnp.where(batch.mask > 0, lp + shift, -jnp.inf)
    return batch.token_sum(lp * shift), {"max": jnp.max(x), "tokens": batch.num_tokens}


def _counted(batch: LossBatch, lp: jax.Array) -> Any:
    return batch.token_sum(lp * lp), {"positive": jnp.sum((lp > -0.5) & (batch.mask > 0))}


def test_regularizer_metrics_agree_across_norm_methods() -> None:
    """Metrics of several kinds and instances come back per regularizer, whatever the path."""
    inputs, lps = rl_data(LENGTHS, seed=4)
    regs = [
        Regularizer("shift_a", _shifted_max, weight=0.5, params={"shift": 1.0}),
        Regularizer("counted", _counted, weight=0.1),
        Regularizer("shift_b", _shifted_max, weight=-0.5, params={"shift": 3.0}),
        R.l1(weight=0.2),
    ]
    lp_all = np.concatenate(lps).ravel()
    want = {
        "shift_a/max": lp_all.max() + 1.0,
        "shift_a/tokens": lp_all.size,
        "counted/positive": (lp_all > -0.5).sum(),
        "shift_b/max": lp_all.max() + 3.0,
        "shift_b/tokens": lp_all.size,
    }
    for track, method in ((False, "grads"), (True, "grads"), (True, "vmap")):
        out = compute_custom_loss(
            inputs, lps, "ppo", regularizers=regs, track_grad_norms=track, norm_method=method
        )
        got = {k: v for k, v in out.metrics.items() if "/" in k}
        assert got.keys() == want.keys(), (track, method)
        for key, value in want.items():
            assert got[key] == pytest.approx(value, rel=1e-6), (track, method, key)
        assert out.regularizers["shift_b"].metrics["max"] == pytest.approx(lp_all.max() + 3.0)


def _tinker_style(data: list[dict[str, jax.Array]], logprobs: list[jax.Array]) -> Any:
    loss = sum(jnp.sum(-lp * d["weights"]) for d, lp in zip(data, logprobs, strict=True))
    return loss, {"datums": jnp.asarray(len(logprobs), jnp.float32)}


def test_tinker_style_loss_matches_builtin_and_retraces_only_on_new_shapes() -> None:
    inputs, lps = rl_data((4, 9), k=3)
    reg = R.l2(weight=0.5)
    builtin = compute_custom_loss(inputs, lps, "cross_entropy", regularizers=[reg])
    before = trace_count()
    datum = compute_custom_loss(inputs, lps, _tinker_style, regularizers=[reg])
    again = compute_custom_loss(
        inputs,
        [lp * 0.5 for lp in lps],
        DatumLoss(_tinker_style),
        regularizers=[reg.with_weight(2.0)],
    )
    assert trace_count() == before + 1  # cached on the list of datum shapes
    compute_custom_loss(*rl_data((5, 8), k=3), _tinker_style, regularizers=[reg])
    assert trace_count() == before + 2  # same bucket, new shapes: retraced
    assert datum.loss_total == pytest.approx(builtin.loss_total, rel=1e-6)
    assert datum.metrics == {"datums": 2.0}
    assert again.regularizers["l2"].weight == 2.0
    for a, b, lp in zip(datum.gradients, builtin.gradients, lps, strict=True):
        assert a.shape == lp.shape == (len(lp), 3)
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_ragged_stream_compiles_once_per_bucket() -> None:
    rng = np.random.default_rng(3)
    bucketing = Bucketing()
    buckets: set[tuple[int, int]] = set()
    before = trace_count()
    for step in range(40):
        inputs, lps = stream_batch(rng)
        # specs rebuilt every step with new weights and parameter values: still one program
        regs = [
            R.l1(weight=0.01 * step, center=-0.1 * step, name="l1"),
            R.sequence_variance(weight=float(step)),
        ]
        result = compute_custom_loss(
            inputs,
            lps,
            "ppo",
            regularizers=regs,
            loss_fn_config={"clip_low_threshold": 0.5 + 0.01 * step},
        )
        assert np.isfinite(result.loss_total)
        batch = pack_inputs(inputs, lps, dtype=np.float32, bucketing=bucketing).batch
        buckets.add((batch.mask.shape[0], batch.seq_valid.shape[0]))
    assert 1 < len(buckets) <= 8
    assert trace_count() - before == len(buckets)


def test_weight_and_param_sweep_never_retraces() -> None:
    rng = np.random.default_rng(4)
    inputs, lps = stream_batch(rng)
    regs = [R.l2(weight=1.0, center=0.0), R.entropy(weight=-0.1)]
    compute_custom_loss(
        inputs, lps, "importance_sampling", regularizers=regs, track_grad_norms=True
    )
    before = trace_count()
    values = []
    for w in np.linspace(-1.0, 1.0, 8):
        swept = [regs[0].with_weight(float(w)).with_params(center=float(w)), regs[1]]
        result = compute_custom_loss(
            inputs, lps, "importance_sampling", regularizers=swept, track_grad_norms=True
        )
        values.append(result.regularizers["l2"].value)
    assert trace_count() == before
    assert len(set(values)) == 8  # the traced parameter really changed the value
