"""lora_delta against its per-slot reference, per-token and per-row slots."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tinkjax.kernels import (
    lora_delta,
    lora_delta_grouped,
    lora_delta_reference,
    lora_linear,
    lora_linear_reference,
)


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


def _numpy_delta(x: np.ndarray, a: np.ndarray, b: np.ndarray, slot: np.ndarray,
                 scale: np.ndarray) -> np.ndarray:  # fmt: skip
    """float64 NumPy: each row through its slot's adapter."""
    return np.stack([(x[n] @ a[s]) @ b[s] * scale[s] for n, s in enumerate(slot)])


@pytest.mark.parametrize(
    ("slot", "x_shape"),
    [
        ([2, 0, 2, 0, 3, 2], (6, 5, 4)),  # unsorted rows; slot 1 has none (an empty group)
        ([1, 1, 1, 1], (4, 4)),  # every row in one group, the others empty
        ([0, 3, 1, 2, 0, 0, 0], (7, 3, 4)),
    ],
)
def test_grouped_values_and_gradients_match_numpy(
    slot: list[int], x_shape: tuple[int, ...]
) -> None:
    """``lora_delta_grouped`` (``ragged_dot``) against float64 NumPy, forward and VJP (the
    VJP by float64 finite differences of the NumPy reference), with empty groups."""
    rng = np.random.default_rng(4)
    with jax.enable_x64(True):
        x = rng.normal(size=x_shape)
        a = rng.normal(size=(4, x_shape[-1], 2))
        b = rng.normal(size=(4, 2, 3))
        s = np.asarray(slot, np.int32)
        scale = rng.uniform(0.5, 2.0, size=(4,))
        g = rng.normal(size=(*x_shape[:-1], 3))
        got = jax.jit(lora_delta_grouped)(x, a, b, jnp.asarray(s), scale)
        np.testing.assert_allclose(np.asarray(got), _numpy_delta(x, a, b, s, scale), rtol=1e-12)

        def loss(x: jax.Array, a: jax.Array, b: jax.Array, scale: jax.Array) -> jax.Array:
            return jnp.sum(lora_delta_grouped(x, a, b, jnp.asarray(s), scale) * g)

        grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))(x, a, b, scale)
        for i, arg in enumerate((x, a, b, scale)):
            fd = np.zeros_like(arg)
            for index in np.ndindex(arg.shape):
                args = [x, a, b, scale]
                bumped = [arg.copy(), arg.copy()]
                bumped[0][index] += 1e-6
                bumped[1][index] -= 1e-6
                values = []
                for v in bumped:
                    args[i] = v
                    values.append(np.sum(_numpy_delta(args[0], args[1], args[2], s, args[3]) * g))
                fd[index] = (values[0] - values[1]) / 2e-6
            np.testing.assert_allclose(np.asarray(grads[i]), fd, rtol=1e-6, atol=1e-8)
        # Empty groups get exactly zero weight gradients.
        for empty in set(range(4)) - set(slot):
            assert not np.any(np.asarray(grads[1][empty]))
            assert not np.any(np.asarray(grads[2][empty]))
