"""Every built-in loss against a NumPy reference (under jit), plus gradient identities."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tinkjax import losses

RNG = np.random.default_rng(0)
SHAPE = (3, 5)  # [T, K]: every loss must work elementwise on 2-D too
LP = -RNG.uniform(0.1, 3.0, size=SHAPE)
Q = LP + RNG.normal(scale=0.4, size=SHAPE)
A = RNG.normal(size=SHAPE)
W = RNG.normal(size=SHAPE)


def _np_ppo(lp: np.ndarray, q: np.ndarray, a: np.ndarray, lo: float, hi: float) -> np.ndarray:
    r = np.exp(lp - q)
    return -np.minimum(r * a, np.clip(r, lo, hi) * a)


CASES = {
    "cross_entropy": (lambda lp: losses.cross_entropy(lp, weights=W), -LP * W),
    "importance_sampling": (
        lambda lp: losses.importance_sampling(lp, sampler_logprobs=Q, advantages=A),
        -np.exp(LP - Q) * A,
    ),
    "ppo": (
        lambda lp: losses.ppo(
            lp, sampler_logprobs=Q, advantages=A, clip_low_threshold=0.9, clip_high_threshold=1.1
        ),
        _np_ppo(LP, Q, A, 0.9, 1.1),
    ),
    "cispo": (
        lambda lp: losses.cispo(lp, sampler_logprobs=Q, advantages=A),
        -np.clip(np.exp(LP - Q), 0.8, 1.2) * LP * A,
    ),
    "dro": (
        lambda lp: losses.dro(lp, sampler_logprobs=Q, advantages=A, beta=0.3),
        -(LP * A - 0.15 * (LP - Q) ** 2),
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_values_match_numpy(name: str) -> None:
    fn, expected = CASES[name]
    got = jax.jit(fn)(jnp.asarray(LP, jnp.float32))
    assert got.shape == SHAPE
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_gradients_match_closed_forms() -> None:
    lp = jnp.asarray(LP, jnp.float32)
    r = np.exp(LP - Q)
    g_is = jax.grad(lambda x: jnp.sum(CASES["importance_sampling"][0](x)))(lp)
    np.testing.assert_allclose(g_is, -r * A, rtol=1e-5)
    g_cispo = jax.grad(lambda x: jnp.sum(CASES["cispo"][0](x)))(lp)  # clip weight is constant
    np.testing.assert_allclose(g_cispo, -np.clip(r, 0.8, 1.2) * A, rtol=1e-5)
    g_ppo = jax.grad(lambda x: jnp.sum(CASES["ppo"][0](x)))(lp)
    unclipped = r * A <= np.clip(r, 0.9, 1.1) * A
    np.testing.assert_allclose(g_ppo, np.where(unclipped, -r * A, 0.0), rtol=1e-5, atol=1e-7)
    g_dro = jax.grad(lambda x: jnp.sum(CASES["dro"][0](x)))(lp)
    np.testing.assert_allclose(g_dro, -(A - 0.3 * (LP - Q)), rtol=1e-5)


def _np_gspo(lp, q, a, mask, seg, n, lo, hi):  # type: ignore[no-untyped-def]
    out = np.zeros_like(lp)
    grad = np.zeros_like(lp)
    for i in range(n):
        sel = seg == i
        count = mask[sel].sum()
        if count == 0:
            continue
        s = np.exp((mask * (lp - q))[sel].sum() / count)
        unclipped = s * a <= np.clip(s, lo, hi) * a
        out[sel] = (-np.minimum(s * a, np.clip(s, lo, hi) * a) * mask / count)[sel]
        grad[sel] = np.where(unclipped, -a * s * mask / count, 0.0)[sel]
    return out, grad


def test_gspo_value_and_gradient_match_numpy() -> None:
    rng = np.random.default_rng(3)
    t = 12
    lp = -rng.uniform(0.1, 2.0, size=t)
    q = lp + rng.normal(scale=0.2, size=t)
    a = np.repeat(rng.normal(size=3), 4)
    mask = (rng.random(t) < 0.7).astype(np.float64)
    mask[8:] = 0.0  # sequence 2 has no masked token: it contributes nothing
    seg = np.repeat(np.arange(3), 4)
    with jax.enable_x64(True):

        def total(x: jax.Array) -> jax.Array:
            return losses.gspo(
                x, sampler_logprobs=q, advantages=a, sequence_ratio_mask=mask,
                segment_ids=jnp.asarray(seg), num_segments=3, clip_low_threshold=0.95,
                clip_high_threshold=1.05,
            )  # fmt: skip

        x = jnp.asarray(lp)
        value = jax.jit(total)(x)
        grad = jax.grad(lambda v: jnp.sum(total(v)))(x)
    ref_value, ref_grad = _np_gspo(lp, q, a, mask, seg, 3, 0.95, 1.05)
    np.testing.assert_allclose(value, ref_value, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-12, atol=1e-14)
    assert np.all(np.asarray(value)[8:] == 0)


def test_gspo_without_segments_is_one_sequence() -> None:
    lp = jnp.asarray(LP[0], jnp.float32)
    q, a = Q[0], np.full(5, 0.5)
    got = losses.gspo(lp, sampler_logprobs=q, advantages=a, sequence_ratio_mask=np.ones(5))
    s = np.exp(np.mean(LP[0] - q))
    np.testing.assert_allclose(np.sum(got), -min(s * 0.5, np.clip(s, 0.8, 1.2) * 0.5), rtol=1e-5)


def test_zero_sum_weights_are_not_normalised() -> None:
    w = np.array([1.0, -1.0, 2.0, -2.0])
    lp = jnp.asarray([-1.0, -2.0, -0.5, -3.0])
    np.testing.assert_allclose(losses.cross_entropy(lp, weights=w), [1.0, -2.0, 1.0, -6.0])
