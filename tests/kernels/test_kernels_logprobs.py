"""target_logprobs against its reference and NumPy, 1-D and [T, K] targets."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tinkjax.kernels import target_logprobs, target_logprobs_reference


def _numpy_logprobs(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(-1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    if targets.ndim == logits.ndim - 1:
        return np.take_along_axis(logp, targets[..., None], -1)[..., 0]
    return np.take_along_axis(logp, targets, -1)


@pytest.mark.parametrize("k", [None, 3])
def test_matches_reference_and_numpy(k: int | None) -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 7, 11)).astype(np.float32) * 4
    shape = (2, 7) if k is None else (2, 7, k)
    targets = rng.integers(0, 11, size=shape)
    got = jax.jit(target_logprobs)(jnp.asarray(logits), jnp.asarray(targets))
    ref = target_logprobs_reference(jnp.asarray(logits), jnp.asarray(targets))
    assert got.shape == shape
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got, _numpy_logprobs(logits, targets), rtol=1e-5, atol=1e-5)


def test_gradient_matches_reference() -> None:
    rng = np.random.default_rng(1)
    logits = jnp.asarray(rng.normal(size=(5, 9)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, 9, size=(5,)))
    w = jnp.asarray(rng.normal(size=(5,)), jnp.float32)
    g1 = jax.grad(lambda x: jnp.sum(target_logprobs(x, targets) * w))(logits)
    g2 = jax.grad(lambda x: jnp.sum(target_logprobs_reference(x, targets) * w))(logits)
    np.testing.assert_allclose(g1, g2, rtol=1e-5, atol=1e-6)


def test_bad_shapes_and_dtypes() -> None:
    logits = jnp.zeros((3, 5))
    with pytest.raises(ValueError, match="targets shape"):
        target_logprobs(logits, jnp.zeros((4,), jnp.int32))
    with pytest.raises(TypeError, match="integers"):
        target_logprobs(logits, jnp.zeros((3,), jnp.float32))
