"""lora_delta against its per-slot reference, per-token and per-row slots."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tinkjax.kernels import lora_delta, lora_delta_reference, lora_linear, lora_linear_reference


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
    np.testing.assert_allclose(
        got, lora_delta_reference(x, a, b, slot, scale), rtol=1e-5, atol=1e-5
    )
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

    def total(fn: Callable[..., jax.Array], a: jax.Array, b: jax.Array) -> jax.Array:
        return jnp.sum(jnp.sin(fn(x, a, b, slot, scale)))

    g1 = jax.grad(lambda a, b: total(lora_delta, a, b), argnums=(0, 1))(a, b)
    g2 = jax.grad(lambda a, b: total(lora_delta_reference, a, b), argnums=(0, 1))(a, b)
    for u, v in zip(g1, g2, strict=True):
        np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("n_slots", "x_shape"), [(1, (3, 5, 6)), (3, (4, 5, 6)), (1, (4, 6))])
def test_all_gradients_match_reference(n_slots: int, x_shape: tuple[int, ...]) -> None:
    """The custom VJP against autodiff of the reference: x, a, b and scale, per-row slots."""
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(size=x_shape), jnp.float32)
    a = jnp.asarray(rng.normal(size=(n_slots, 6, 2)), jnp.float32)
    b = jnp.asarray(rng.normal(size=(n_slots, 2, 3)), jnp.float32)
    slot = jnp.asarray(rng.integers(0, n_slots, size=x_shape[:1]), jnp.int32)
    scale = jnp.asarray(rng.uniform(0.5, 2.0, size=(n_slots,)), jnp.float32)
    probe = jnp.asarray(rng.normal(size=(*x_shape[:-1], 3)), jnp.float32)

    def total(
        fn: Callable[..., jax.Array], x: jax.Array, a: jax.Array, b: jax.Array, scale: jax.Array
    ) -> jax.Array:
        return jnp.sum(jnp.sin(fn(x, a, b, slot, scale) * probe))

    args = (x, a, b, scale)
    got = jax.jit(jax.grad(lambda *p: total(lora_delta, *p), argnums=(0, 1, 2, 3)))(*args)
    want = jax.grad(lambda *p: total(lora_delta_reference, *p), argnums=(0, 1, 2, 3))(*args)
    for name, u, v in zip(("x", "a", "b", "scale"), got, want, strict=True):
        assert u.shape == v.shape, name
        np.testing.assert_allclose(u, v, rtol=1e-4, atol=1e-5, err_msg=name)
    # Slots no row uses get exactly zero gradient.
    unused = sorted(set(range(n_slots)) - set(np.asarray(slot).tolist()))
    for s in unused:
        assert not np.any(np.asarray(got[1][s]))
        assert not np.any(np.asarray(got[2][s]))


@pytest.mark.parametrize(("n_slots", "x_shape"), [(1, (3, 5, 6)), (1, (4, 6)), (2, (4, 5, 6))])
def test_lora_linear_values_and_gradients(n_slots: int, x_shape: tuple[int, ...]) -> None:
    """The whole projection (merged weights for one slot) against its reference, float64."""
    with jax.enable_x64(True):
        rng = np.random.default_rng(4)
        x = jnp.asarray(rng.normal(size=x_shape))
        w = jnp.asarray(rng.normal(size=(6, 3)))
        a = jnp.asarray(rng.normal(size=(n_slots, 6, 2)))
        b = jnp.asarray(rng.normal(size=(n_slots, 2, 3)))
        slot = jnp.asarray(rng.integers(0, n_slots, size=x_shape[:1]), jnp.int32)
        scale = jnp.asarray(rng.uniform(0.5, 2.0, size=(n_slots,)))
        probe = jnp.asarray(rng.normal(size=(*x_shape[:-1], 3)))
        got = jax.jit(lora_linear)(x, w, a, b, slot, scale)
        want = lora_linear_reference(x, w, a, b, slot, scale)
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(
            got, x @ w + lora_delta(x, a, b, slot, scale), rtol=1e-12, atol=1e-12
        )

        def total(fn: Callable[..., jax.Array], *p: jax.Array) -> jax.Array:
            x, w, a, b, scale = p
            return jnp.sum(jnp.sin(fn(x, w, a, b, slot, scale) * probe))

        args = (x, w, a, b, scale)
        grads = jax.jit(jax.grad(lambda *p: total(lora_linear, *p), argnums=(0, 1, 2, 3, 4)))
        refs = jax.grad(lambda *p: total(lora_linear_reference, *p), argnums=(0, 1, 2, 3, 4))
        for name, u, v in zip(
            ("x", "w", "a", "b", "scale"), grads(*args), refs(*args), strict=True
        ):
            np.testing.assert_allclose(u, v, rtol=1e-10, atol=1e-10, err_msg=name)


def test_shape_errors() -> None:
    a, b = jnp.zeros((2, 4, 2)), jnp.zeros((2, 2, 3))
    with pytest.raises(ValueError, match="slot"):
        lora_delta(jnp.zeros((3, 4)), a, b, jnp.zeros((2,), jnp.int32), jnp.ones((2,)))
    with pytest.raises(ValueError, match="x must be"):
        lora_delta(jnp.zeros((3, 5)), a, b, jnp.zeros((3,), jnp.int32), jnp.ones((2,)))


def test_lora_linear_shape_errors() -> None:
    a, b = jnp.zeros((1, 4, 2)), jnp.zeros((1, 2, 3))
    with pytest.raises(ValueError, match="w must be"):
        lora_linear(
            jnp.zeros((3, 4)), jnp.zeros((4, 4)), a, b, jnp.zeros((3,), jnp.int32), jnp.ones((1,))
        )
