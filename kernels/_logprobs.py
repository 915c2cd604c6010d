"""Target-token log-probabilities: ``log_softmax(logits)`` gathered at the targets.

The kernel never materialises the ``[..., V]`` log-softmax: it gathers the target logits and
subtracts one ``logsumexp`` per position, so memory stays at one ``[...]`` vector beyond the
logits themselves (and the backward pass needs only the softmax XLA already builds).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["target_logprobs", "target_logprobs_reference"]


def _check(logits: jax.Array, targets: jax.Array) -> bool:
    """Validates shapes; returns whether targets carry a trailing ``K`` axis."""
    if not jnp.issubdtype(targets.dtype, jnp.integer):
        raise TypeError(f"targets must be integers, got dtype {targets.dtype}")
    if logits.ndim < 1:
        raise ValueError(f"logits must have a vocabulary axis, got shape {logits.shape}")
    lead = logits.shape[:-1]
    if targets.shape == lead:
        return False
    if targets.ndim == logits.ndim and targets.shape[:-1] == lead:
        return True
    raise ValueError(
        f"targets shape {targets.shape} must be logits.shape[:-1] = {lead} or {lead} + (K,)"
    )


def target_logprobs(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Log-probability of each target token under ``softmax(logits)``.

    Args:
        logits: ``[..., V]`` float, unnormalised scores.
        targets: ``[...]`` int (one target per position) or ``[..., K]`` int (K targets per
            position, e.g. the cookbook's multi-target "decisions" datums).

    Returns:
        ``targets.shape`` float (logits' dtype): ``logits[..., t] - logsumexp(logits)``.
    """
    has_k = _check(logits, targets)
    lse = jax.nn.logsumexp(logits, axis=-1)  # [...]
    idx = targets.astype(jnp.int32)
    if has_k:
        return jnp.take_along_axis(logits, idx, axis=-1) - lse[..., None]
    picked = jnp.take_along_axis(logits, idx[..., None], axis=-1)[..., 0]
    return picked - lse


def target_logprobs_reference(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Plain reference: full ``log_softmax`` then a one-hot contraction."""
    has_k = _check(logits, targets)
    logp = jax.nn.log_softmax(logits, axis=-1)
    onehot = jax.nn.one_hot(
        targets if has_k else targets[..., None], logits.shape[-1], dtype=logits.dtype
    )  # [..., K, V]
    out = jnp.einsum("...kv,...v->...k", onehot, logp)
    return out if has_k else out[..., 0]
