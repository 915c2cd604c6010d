"""filter_logits against its rank-based reference and hand-computed cases."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from tinkjax.kernels import filter_logits, filter_logits_reference


def test_matches_reference_on_random_rows() -> None:
    rng = np.random.default_rng(0)
    n, v = 64, 40
    logits = jnp.asarray(rng.normal(size=(n, v)) * 3, jnp.float32)
    temperature = jnp.asarray(rng.uniform(0.3, 2.0, size=n), jnp.float32)
    top_k = jnp.asarray(rng.integers(-1, v + 3, size=n), jnp.int32)
    top_p = jnp.asarray(
        np.where(rng.random(n) < 0.3, 1.0, rng.uniform(0.05, 1.0, size=n)), jnp.float32
    )
    got = jax.jit(filter_logits)(logits, temperature, top_k, top_p)
    ref = filter_logits_reference(logits, temperature, top_k, top_p)
    np.testing.assert_array_equal(np.isfinite(got), np.isfinite(ref))
    np.testing.assert_allclose(
        np.where(np.isfinite(got), got, 0), np.where(np.isfinite(ref), ref, 0), rtol=1e-6
    )


def test_hand_cases() -> None:
    logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]] * 4, jnp.float32))
    t = jnp.ones((4,), jnp.float32)
    top_k = jnp.asarray([2, 0, -1, 1], jnp.int32)
    top_p = jnp.asarray([1.0, 0.7, 0.81, 1.0], jnp.float32)
    kept = np.isfinite(np.asarray(filter_logits(logits, t, top_k, top_p)))
    np.testing.assert_array_equal(
        kept,
        [[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 0, 0, 0]],
    )


def test_temperature_scales_and_no_limit_keeps_everything() -> None:
    logits = jnp.asarray([[1.0, 2.0, 3.0]], jnp.float32)
    out = filter_logits(logits, jnp.asarray([2.0]), jnp.asarray([0], jnp.int32), jnp.asarray([1.0]))
    np.testing.assert_allclose(out, logits / 2.0)
