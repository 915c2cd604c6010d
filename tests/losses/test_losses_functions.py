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
M = (RNG.random(SHAPE) < 0.7).astype(np.float64)


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
    "stable_reinforce": (
        lambda lp: losses.stable_reinforce(
            lp, sampler_logprobs=Q, advantages=A, sampled_mask=M, clip_high_threshold=1.1
        ),
        -np.minimum(np.exp(LP - Q), 1.1) * A * M,
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


def test_stable_reinforce_finite_difference_gradient_float64() -> None:
    """Through a softmax policy: the gradient is ``-sum A m min(r, C) d lp`` (a REINFORCE step
    with a truncated weight), checked against central differences of the surrogate with the
    weight held at its value (float64), on ratios on both sides of the cap."""
    rng = np.random.default_rng(7)
    t, v, cap = 6, 5, 1.3
    theta0 = rng.normal(size=(t, v))
    targets = rng.integers(0, v, size=t)
    lp0 = theta0[np.arange(t), targets] - np.log(np.exp(theta0).sum(-1))
    q = lp0 + np.array([-0.8, -0.1, 0.05, 0.6, -0.5, 0.2])  # ratios above and below the cap
    a = rng.normal(size=t)
    m = np.array([1.0, 1.0, 0.0, 1.0, 1.0, 1.0])
    w0 = np.minimum(np.exp(lp0 - q), cap)
    assert (np.exp(lp0 - q) > cap).any()
    assert (np.exp(lp0 - q) < cap).any()

    def np_lp(theta: np.ndarray) -> np.ndarray:
        return theta[np.arange(t), targets] - np.log(np.exp(theta).sum(-1))

    def surrogate(theta: np.ndarray) -> float:  # the objective whose gradient is the step
        return float(np.sum(-w0 * np.exp(np_lp(theta) - lp0) * a * m))

    eps = 1e-6
    fd = np.zeros_like(theta0)
    for idx in np.ndindex(theta0.shape):
        up, down = theta0.copy(), theta0.copy()
        up[idx] += eps
        down[idx] -= eps
        fd[idx] = (surrogate(up) - surrogate(down)) / (2 * eps)
    with jax.enable_x64(True):

        def total(theta: jax.Array) -> jax.Array:
            lp = jax.nn.log_softmax(theta)[jnp.arange(t), targets]
            return jnp.sum(
                losses.stable_reinforce(
                    lp, sampler_logprobs=q, advantages=a, sampled_mask=m, clip_high_threshold=cap
                )
            )

        value, grad = jax.value_and_grad(total)(jnp.asarray(theta0))
    np.testing.assert_allclose(grad, fd, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(value, np.sum(-w0 * a * m), rtol=1e-12)
    # Below the cap the step is importance_sampling's; masked tokens give nothing.
    below = (np.exp(lp0 - q) < cap) & (m > 0)
    g_lp = jax.grad(
        lambda x: jnp.sum(
            losses.stable_reinforce(
                x, sampler_logprobs=q, advantages=a, sampled_mask=m, clip_high_threshold=cap
            )
        )
    )(jnp.asarray(lp0))
    np.testing.assert_allclose(np.asarray(g_lp)[below], (-np.exp(lp0 - q) * a)[below], rtol=1e-5)
    assert np.asarray(g_lp)[2] == 0.0


def test_stable_reinforce_huge_ratio_stays_finite() -> None:
    lp = jnp.asarray([-0.1, -1.0], jnp.float32)
    q = np.array([-200.0, -1.0], np.float32)  # exp(lp - q) overflows float32
    out = losses.stable_reinforce(
        lp, sampler_logprobs=q, advantages=np.ones(2), sampled_mask=np.ones(2)
    )
    np.testing.assert_allclose(out, [-2.0, -1.0], rtol=1e-6)
    g = jax.grad(
        lambda x: jnp.sum(
            losses.stable_reinforce(
                x, sampler_logprobs=q, advantages=np.ones(2), sampled_mask=np.ones(2)
            )
        )
    )(lp)
    assert np.all(np.isfinite(g))
