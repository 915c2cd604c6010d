"""Multi-adapter LoRA: each row of a batch goes through the low-rank update of its own slot.

``delta[n] = scale[s] * (x[n] @ a[s]) @ b[s]`` with ``s = slot[n]``. Rows index the leading
axis of ``x``; a row may itself be a sequence (``x: [N, T, d_in]``), in which case every token
of row ``n`` uses ``slot[n]``: the local backend batches whole sequences, so gathering one
``[d_in, r]`` matrix per row is far cheaper than one per token.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["lora_delta", "lora_delta_reference"]


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
    if a.shape[0] == 1:  # one adapter: plain matmuls, no per-row gather
        return (x @ a[0]) @ b[0] * scale[0]
    idx = slot.astype(jnp.int32)
    a_rows, b_rows = a[idx], b[idx]  # [N, d_in, r], [N, r, d_out]
    row_scale = scale[idx].reshape((-1,) + (1,) * (x.ndim - 1))
    h = jnp.einsum("n...d,ndr->n...r", x, a_rows)
    return jnp.einsum("n...r,nro->n...o", h, b_rows) * row_scale


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
