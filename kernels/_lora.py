"""Multi-adapter LoRA: each row of a batch goes through the low-rank update of its own slot.

``delta[n] = scale[s] * (x[n] @ a[s]) @ b[s]`` with ``s = slot[n]``. Rows index the leading
axis of ``x``; a row may itself be a sequence (``x: [N, T, d_in]``), in which case every token
of row ``n`` uses ``slot[n]``: the local backend batches whole sequences, so gathering one
``[d_in, r]`` matrix per row is far cheaper than one per token.

``lora_linear`` is the whole adapted projection ``x @ w + delta``. With a single adapter it
multiplies by the merged weight ``w + scale * a @ b`` (one ``[d_in, d_out]`` matmul instead of
three, the merge costing ``d_in * r * d_out`` once per call), which is exact in real arithmetic
and differs from the unmerged sum only by float rounding.

``lora_delta_grouped`` computes the same update as a grouped GEMM (``jax.lax.ragged_dot``, rows
sorted by slot). The local backend's training programs use neither multi-slot path: they run
each chunk of one adapter's rows through the single-adapter merged matmul
(``tinkjax.models._programs.forward_backward_core``), which ``bench/lora_bench.py`` measures
fastest per job on CPU.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = [
    "lora_delta",
    "lora_delta_grouped",
    "lora_delta_reference",
    "lora_linear",
    "lora_linear_reference",
]


def _check(x: jax.Array, a: jax.Array, b: jax.Array, slot: jax.Array, scale: jax.Array) -> None:
    if a.ndim != 3 or b.ndim != 3:
        raise ValueError(
            f"a and b must be [S, d_in, r] and [S, r, d_out], got {a.shape}, {b.shape}"
        )
    n_slots, d_in, rank = a.shape
    if b.shape[:2] != (n_slots, rank):
        raise ValueError(f"b shape {b.shape} does not match a shape {a.shape}")
    if x.ndim < 2 or x.shape[-1] != d_in:
        raise ValueError(f"x must be [N, ..., {d_in}], got {x.shape}")
    if slot.shape != x.shape[:1]:
        raise ValueError(f"slot must be [N] = {x.shape[:1]}, got {slot.shape}")
    if scale.shape != (n_slots,):
        raise ValueError(f"scale must be [S] = ({n_slots},), got {scale.shape}")


def lora_delta(
    x: jax.Array, a: jax.Array, b: jax.Array, slot: jax.Array, scale: jax.Array
) -> jax.Array:
    """LoRA update of each row under its slot's adapter.

    Differentiable in ``x``, ``a``, ``b`` and ``scale`` through a hand-written VJP whose
    weight gradients contract over tokens with the *small* operand transposed
    (``(g b^T)^T x`` rather than ``x^T (g b^T)``): XLA:CPU would otherwise materialise a
    transposed copy of every ``[tokens, d_in]`` activation in the backward pass.

    Args:
        x: ``[N, d_in]`` or ``[N, T, d_in]`` activations.
        a: ``[S, d_in, r]`` down-projections of the ``S`` adapter slots.
        b: ``[S, r, d_out]`` up-projections.
        slot: ``[N]`` int, the slot of each row (in ``[0, S)``).
        scale: ``[S]`` float, ``alpha / rank`` per slot.

    Returns:
        ``x.shape[:-1] + (d_out,)``, same dtype as ``x``.
    """
    _check(x, a, b, slot, scale)
    return _delta(x, a, b, slot.astype(jnp.int32), scale)


def _rows(x: jax.Array) -> jax.Array:
    """``x`` as ``[N, T, d]`` (``T = 1`` for ``[N, d]``)."""
    return x.reshape(x.shape[0], -1, x.shape[-1])


def _forward(
    x: jax.Array, a: jax.Array, b: jax.Array, slot: jax.Array, scale: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """``(delta, h = x @ a)`` of ``lora_delta`` (``h`` is the VJP's residual)."""
    if a.shape[0] == 1:  # one adapter: plain matmuls, no per-row gather
        h = x @ a[0]
        return h @ b[0] * scale[0], h
    a_rows, b_rows = a[slot], b[slot]  # [N, d_in, r], [N, r, d_out]
    row_scale = scale[slot].reshape((-1,) + (1,) * (x.ndim - 1))
    h = jnp.einsum("n...d,ndr->n...r", x, a_rows)
    return jnp.einsum("n...r,nro->n...o", h, b_rows) * row_scale, h


@jax.custom_vjp
def _delta(
    x: jax.Array, a: jax.Array, b: jax.Array, slot: jax.Array, scale: jax.Array
) -> jax.Array:
    return _forward(x, a, b, slot, scale)[0]


def _delta_fwd(
    x: jax.Array, a: jax.Array, b: jax.Array, slot: jax.Array, scale: jax.Array
) -> tuple[jax.Array, tuple[jax.Array, ...]]:
    out, h = _forward(x, a, b, slot, scale)
    return out, (x, a, b, slot, scale, h)


_CONTRACT_ROWS = (((0,), (0,)), ((), ()))  # contract the leading (token) axis of both


def _delta_bwd(
    res: tuple[jax.Array, ...], g: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array, None, jax.Array]:
    x, a, b, slot, scale, h = res
    d_in, rank, d_out = a.shape[1], a.shape[2], b.shape[2]
    if a.shape[0] == 1:
        x2, h2, g2 = x.reshape(-1, d_in), h.reshape(-1, rank), g.reshape(-1, d_out)
        gb = g2 @ b[0].T  # [M, r]
        gh = gb * scale[0]  # d loss / d h
        dx = (gh @ a[0].T).reshape(x.shape)
        da = jax.lax.dot_general(gh, x2, _CONTRACT_ROWS).T  # [d_in, r]
        db = jax.lax.dot_general(h2, g2, _CONTRACT_ROWS) * scale[0]  # [r, d_out]
        dscale = jnp.sum(h2 * gb).reshape(1)
        return dx, da[None], db[None], None, dscale.astype(scale.dtype)
    n_slots = a.shape[0]
    x3, h3, g3 = _rows(x), _rows(h), _rows(g)
    a_rows, b_rows = a[slot], b[slot]
    row_scale = scale[slot]
    gb = jnp.einsum("nto,nro->ntr", g3, b_rows)
    gh = gb * row_scale[:, None, None]
    dx = jnp.einsum("ntr,ndr->ntd", gh, a_rows).reshape(x.shape)
    da_rows = jnp.swapaxes(jnp.einsum("ntr,ntd->nrd", gh, x3), 1, 2)  # [N, d_in, r]
    db_rows = jnp.einsum("ntr,nto->nro", h3, g3) * row_scale[:, None, None]
    ds_rows = jnp.sum(h3 * gb, axis=(1, 2))
    da = jax.ops.segment_sum(da_rows, slot, num_segments=n_slots)
    db = jax.ops.segment_sum(db_rows, slot, num_segments=n_slots)
    dscale = jax.ops.segment_sum(ds_rows, slot, num_segments=n_slots)
    return dx, da, db, None, dscale.astype(scale.dtype)


_delta.defvjp(_delta_fwd, _delta_bwd)


def lora_delta_grouped(
    x: jax.Array, a: jax.Array, b: jax.Array, slot: jax.Array, scale: jax.Array
) -> jax.Array:
    """``lora_delta`` as a grouped GEMM: rows sorted by slot, then ``jax.lax.ragged_dot`` for
    the ``x @ a`` and ``h @ b`` products with one group per slot (its rows' tokens), the
    Punica / S-LoRA layout. Gradients are JAX's own rules for ``ragged_dot`` (exact).

    Same arguments and result as :func:`lora_delta`; rows may come in any slot order (they are
    sorted, stably, and put back), and a slot with no rows is an empty group. Where it pays
    depends on the backend's ``ragged_dot``: see ``bench/lora_bench.py`` (on XLA:CPU it is
    lowered densely, every group over every row, and costs more than the gathered path).
    """
    _check(x, a, b, slot, scale)
    n_slots, d_in, _ = a.shape
    per_row = 1
    for size in x.shape[1:-1]:
        per_row *= size
    slot = slot.astype(jnp.int32)
    order = jnp.argsort(slot, stable=True)
    sizes = jnp.zeros((n_slots,), jnp.int32).at[slot].add(per_row)
    rows = x[order].reshape(-1, d_in)
    h = jax.lax.ragged_dot(rows, a, sizes)
    row_scale = jnp.repeat(scale[slot[order]], per_row, total_repeat_length=rows.shape[0])
    out = jax.lax.ragged_dot(h, b, sizes) * row_scale[:, None].astype(h.dtype)
    unsorted = (
        jnp.zeros_like(out.reshape(x.shape[0], -1)).at[order].set(out.reshape(x.shape[0], -1))
    )
    return unsorted.reshape(*x.shape[:-1], b.shape[-1]).astype(x.dtype)


def lora_linear(
    x: jax.Array,
    w: jax.Array,
    a: jax.Array,
    b: jax.Array,
    slot: jax.Array,
    scale: jax.Array,
) -> jax.Array:
    """``x @ w + lora_delta(x, a, b, slot, scale)``: a base projection with its LoRA update.

    Args:
        x: ``[N, d_in]`` or ``[N, T, d_in]`` activations.
        w: ``[d_in, d_out]`` base weight.
        a, b, slot, scale: as in ``lora_delta``.

    Returns:
        ``x.shape[:-1] + (d_out,)``. Differentiable in every float argument; with one slot the
        forward pass uses the merged weight ``w + scale * a @ b`` and the VJP contracts over
        tokens with the small operand transposed, as ``lora_delta`` does.
    """
    _check(x, a, b, slot, scale)
    if w.shape != (a.shape[1], b.shape[2]):
        raise ValueError(f"w must be [d_in, d_out] = {(a.shape[1], b.shape[2])}, got {w.shape}")
    if a.shape[0] == 1:
        return _merged(x, w, a, b, scale)
    return x @ w + _delta(x, a, b, slot.astype(jnp.int32), scale)


def _merged_forward(
    x: jax.Array, w: jax.Array, a: jax.Array, b: jax.Array, scale: jax.Array
) -> tuple[jax.Array, jax.Array]:
    merged = w + (a[0] @ b[0]) * scale[0]
    return x @ merged, merged


@jax.custom_vjp
def _merged(x: jax.Array, w: jax.Array, a: jax.Array, b: jax.Array, scale: jax.Array) -> jax.Array:
    return _merged_forward(x, w, a, b, scale)[0]


def _merged_fwd(
    x: jax.Array, w: jax.Array, a: jax.Array, b: jax.Array, scale: jax.Array
) -> tuple[jax.Array, tuple[jax.Array, ...]]:
    y, merged = _merged_forward(x, w, a, b, scale)
    return y, (x, merged, a, b, scale, x @ a[0])


def _merged_bwd(
    res: tuple[jax.Array, ...], g: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array]:
    x, merged, a, b, scale, h = res
    d_in, rank, d_out = a.shape[1], a.shape[2], b.shape[2]
    x2, h2, g2 = x.reshape(-1, d_in), h.reshape(-1, rank), g.reshape(-1, d_out)
    dx = (g2 @ merged.T).reshape(x.shape)
    # Unused cotangents (dw when w is frozen, dscale) are removed by XLA's dead-code pass.
    dw = jax.lax.dot_general(x2, g2, _CONTRACT_ROWS)
    gb = g2 @ b[0].T  # [M, r]
    gh = gb * scale[0]  # d loss / d (x @ a)
    da = jax.lax.dot_general(gh, x2, _CONTRACT_ROWS).T  # [d_in, r]
    db = jax.lax.dot_general(h2, g2, _CONTRACT_ROWS) * scale[0]  # [r, d_out]
    dscale = jnp.sum(h2 * gb).reshape(1).astype(scale.dtype)
    return dx, dw, da[None], db[None], dscale


_merged.defvjp(_merged_fwd, _merged_bwd)


def lora_linear_reference(
    x: jax.Array,
    w: jax.Array,
    a: jax.Array,
    b: jax.Array,
    slot: jax.Array,
    scale: jax.Array,
) -> jax.Array:
    """Plain reference: ``x @ w`` plus ``lora_delta_reference``."""
    return x @ w + lora_delta_reference(x, a, b, slot, scale)


def lora_delta_reference(
    x: jax.Array, a: jax.Array, b: jax.Array, slot: jax.Array, scale: jax.Array
) -> jax.Array:
    """Plain reference: every slot applied to every row, then the row's slot selected."""
    _check(x, a, b, slot, scale)
    out = jnp.zeros((*x.shape[:-1], b.shape[-1]), x.dtype)
    for s in range(a.shape[0]):
        sel = (slot == s).reshape((-1,) + (1,) * (x.ndim - 1))
        out = out + jnp.where(sel, (x @ a[s]) @ b[s] * scale[s], 0.0)
    return out
