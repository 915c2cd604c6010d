"""Built-in regularizers: values against NumPy float64 formulas, gradients and gradient norms
against float64 central finite differences of those formulas (x64)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import pytest

import tinkjax.regularizers as R
from tinkjax.engine import Regularizer, compute_custom_loss

LENGTHS = (9, 23, 2, 14)
Datums = list[np.ndarray]


def _data(dtype: Any) -> tuple[list[dict[str, np.ndarray]], list[np.ndarray]]:
    rng = np.random.default_rng(11)
    inputs, lps = [], []
    for n in LENGTHS:
        lp = -rng.exponential(size=n)
        lps.append(lp.astype(dtype))
        inputs.append(
            {
                "target_tokens": np.zeros(n, np.int64),
                "reference_logprobs": (lp + rng.normal(0, 0.3, n)).astype(dtype),
                "paired_logprobs": (lp + rng.normal(0, 0.3, n)).astype(dtype),
            }
        )
    return inputs, lps


def _reduce(per_datum: Datums, reduction: str) -> float:
    if reduction == "sum":
        return float(sum(x.sum() for x in per_datum))
    if reduction == "mean":
        return float(np.concatenate(per_datum).mean())
    return float(np.mean([x.mean() for x in per_datum]))


def _split(flat: np.ndarray) -> Datums:
    return np.split(flat, np.cumsum(LENGTHS)[:-1])


Ref = Callable[[Datums, list[dict[str, np.ndarray]]], float]


def _key(d: list[dict[str, np.ndarray]], key: str) -> Datums:
    return [x[key].astype(np.float64) for x in d]


def _k3(lps: Datums, d: list[dict[str, np.ndarray]], red: str) -> float:
    rs = [ref - lp for ref, lp in zip(_key(d, "reference_logprobs"), lps, strict=True)]
    return _reduce([np.exp(r) - r - 1 for r in rs], red)


def _seq_var(lps: Datums) -> float:
    return float(np.var([lp.mean() for lp in lps]))


CASES: list[tuple[Regularizer, Ref]] = [
    (
        R.l1(weight=0.3, center=-0.5, name="l1_lp"),
        lambda lps, d: _reduce([np.abs(x + 0.5) for x in lps], "sum"),
    ),
    (
        R.l1(weight=-0.2, target="probs", reduction="mean", name="l1_p"),
        lambda lps, d: _reduce([np.exp(x) for x in lps], "mean"),
    ),
    (
        R.l2(weight=0.7, center=-1.0, reduction="seq_mean", name="l2_lp"),
        lambda lps, d: _reduce([(x + 1.0) ** 2 for x in lps], "seq_mean"),
    ),
    (
        R.l2(weight=1.1, target="probs", center=0.25, name="l2_p"),
        lambda lps, d: _reduce([(np.exp(x) - 0.25) ** 2 for x in lps], "sum"),
    ),
    (
        R.kl(weight=0.5, estimator="k1", name="kl_k1"),
        lambda lps, d: _reduce(
            [x - r for x, r in zip(lps, _key(d, "reference_logprobs"), strict=True)], "sum"
        ),
    ),
    (R.kl(weight=0.9, name="kl_k3"), lambda lps, d: _k3(lps, d, "sum")),
    (
        R.kl(weight=0.4, reduction="seq_mean", name="kl_k3_seq"),
        lambda lps, d: _k3(lps, d, "seq_mean"),
    ),
    (R.entropy(weight=-0.1), lambda lps, d: _reduce([-x for x in lps], "mean")),
    (
        R.consistency(weight=2.0),
        lambda lps, d: _reduce(
            [(x - p) ** 2 for x, p in zip(lps, _key(d, "paired_logprobs"), strict=True)], "sum"
        ),
    ),
    (
        R.consistency(weight=1.5, reduction="mean", name="consistency_mean"),
        lambda lps, d: _reduce(
            [(x - p) ** 2 for x, p in zip(lps, _key(d, "paired_logprobs"), strict=True)], "mean"
        ),
    ),
    (R.sequence_variance(weight=3.0), lambda lps, d: _seq_var(lps)),
]
REGS = [reg for reg, _ in CASES]


def _fd(f: Callable[[np.ndarray], float], x: np.ndarray, h: float = 1e-6) -> np.ndarray:
    g = np.zeros_like(x)
    for i in range(x.size):
        e = np.zeros_like(x)
        e[i] = h
        g[i] = (f(x + e) - f(x - e)) / (2 * h)
    return g


def test_values_float32_match_numpy() -> None:
    inputs, lps = _data(np.float32)
    result = compute_custom_loss(inputs, lps, None, regularizers=REGS)
    lps64 = [lp.astype(np.float64) for lp in lps]
    for reg, ref in CASES:
        out = result.regularizers[reg.name]
        assert out.value == pytest.approx(ref(lps64, inputs), rel=2e-5, abs=1e-6), reg.name
        assert out.contribution == pytest.approx(reg.weight * out.value), reg.name
    assert result.loss_total == pytest.approx(
        sum(r.contribution for r in result.regularizers.values()), rel=1e-5
    )


def test_gradients_and_norms_float64_finite_differences() -> None:
    with jax.enable_x64(True):
        inputs, lps = _data(np.float64)
        result = compute_custom_loss(
            inputs, lps, None, regularizers=REGS, track_grad_norms=True, dtype=np.float64
        )
    flat = np.concatenate(lps)
    total = np.zeros_like(flat)
    for reg, ref in CASES:
        grad = _fd(lambda x, ref=ref: ref(_split(x), inputs), flat)
        total += reg.weight * grad
        got = result.regularizers[reg.name].grad_norm
        assert got == pytest.approx(np.linalg.norm(grad), rel=1e-6, abs=1e-9), reg.name
    np.testing.assert_allclose(np.concatenate(result.gradients), total, rtol=1e-6, atol=1e-9)
    assert result.total_grad_norm == pytest.approx(np.linalg.norm(total), rel=1e-6)


def test_entropy_bonus_lowers_sampled_token_logprobs() -> None:
    # a negative weight on surprisal: the gradient step (−g) lowers lp of the sampled tokens
    inputs, lps = _data(np.float32)
    result = compute_custom_loss(inputs, lps, None, regularizers=[R.entropy(weight=-1.0)])
    assert all((g > 0).all() for g in result.gradients)
