"""lora_delta against its per-slot reference, per-token and per-row slots."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tinkjax.kernels import lora_delta, lora_delta_reference


@pytest.mark.parametrize(("n_slots", "x_shape"), [(3, (6, 8)), (3, (4, 5, 8)), (1, (4, 5, 8))])
def test_matches_reference(n_slots: int, x_shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=x_shape), jnp.float32)
    a = jnp.asarray(rng.normal(size=(n_slots, 8, 2)), jnp.float32)
    b = jnp.asarray(rng.normal(size=(n_slots, 2, 3)), jnp.float32)
    slot = jnp.asarray(rng.integers(0, n_slots, size=x_shape[:1]), jnp.int32)
    scale = jnp.asarray(rng.uniform(0.5, 2.0, size=(n_slots,)), jnp.float32)
    got = jax.jit(lora_delta)(x, a, b, slot, scale)
    assert got.shape == (*x_shape[:-1], 3)
    np.testing.assert_allclose(got, lora_delta_reference(x, a, b, slot, scale), rtol=1e-5, atol=1e-5)
    # Row 0 by hand.
    s = int(slot[0])
    np.testing.assert_allclose(got[0], (x[0] @ a[s] @ b[s]) * scale[s], rtol=1e-5, atol=1e-5)


def test_gradients_match_reference() -> None:
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=(4, 6)), jnp.float32)
    a = jnp.asarray(rng.normal(size=(2, 6, 2)), jnp.float32)
    b = jnp.asarray(rng.normal(size=(2, 2, 3)), jnp.float32)
    slot = jnp.asarray([0, 1, 1, 0], jnp.int32)
    scale = jnp.asarray([1.0, 0.5], jnp.float32)

    def total(fn, a, b):  # type: ignore[no-untyped-def]
        return jnp.sum(jnp.sin(fn(x, a, b, slot, scale)))

    g1 = jax.grad(lambda a, b: total(lora_delta, a, b), argnums=(0, 1))(a, b)
    g2 = jax.grad(lambda a, b: total(lora_delta_reference, a, b), argnums=(0, 1))(a, b)
    for u, v in zip(g1, g2, strict=True):
        np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-5)


def test_shape_errors() -> None:
    a, b = jnp.zeros((2, 4, 2)), jnp.zeros((2, 2, 3))
    with pytest.raises(ValueError, match="slot"):
        lora_delta(jnp.zeros((3, 4)), a, b, jnp.zeros((2,), jnp.int32), jnp.ones((2,)))
    with pytest.raises(ValueError, match="x must be"):
        lora_delta(jnp.zeros((3, 5)), a, b, jnp.zeros((3,), jnp.int32), jnp.ones((2,)))
