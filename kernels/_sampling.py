"""Per-row logit filtering for sampling: temperature, top-k and top-p (nucleus).

Filtered-out tokens get ``-inf``; the survivors keep ``logits / temperature``. ``top_k <= 0``
(or ``>= V``) means no limit and ``top_p >= 1`` means no limit. Temperature 0 (greedy) is the
caller's business (take the argmax of the raw logits); a non-positive temperature is treated
as 1 here so the output stays finite.

Ties at the top-k or top-p boundary are all kept by the kernel (it thresholds on values).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["filter_logits", "filter_logits_reference"]


def _check(logits: jax.Array, temperature: jax.Array, top_k: jax.Array, top_p: jax.Array) -> None:
    if logits.ndim != 2:
        raise ValueError(f"logits must be [N, V], got {logits.shape}")
    rows = logits.shape[:1]
    for name, arr in (("temperature", temperature), ("top_k", top_k), ("top_p", top_p)):
        if arr.shape != rows:
            raise ValueError(f"{name} must be [N] = {rows}, got {arr.shape}")


def _scaled(logits: jax.Array, temperature: jax.Array) -> jax.Array:
    t = jnp.where(temperature > 0, temperature, 1.0).astype(logits.dtype)
    return logits / t[:, None]


def _effective_k(top_k: jax.Array, vocab: int) -> jax.Array:
    k = top_k.astype(jnp.int32)
    return jnp.where((k <= 0) | (k > vocab), vocab, k)


def filter_logits(
    logits: jax.Array, temperature: jax.Array, top_k: jax.Array, top_p: jax.Array
) -> jax.Array:
    """Temperature-scaled logits with tokens outside top-k / top-p set to ``-inf``.

    Args:
        logits: ``[N, V]`` float raw logits.
        temperature: ``[N]`` float (> 0; see module docstring for 0).
        top_k: ``[N]`` int, keep the k largest (``<= 0``: all).
        top_p: ``[N]`` float in ``(0, 1]``, keep the smallest prefix of the sorted
            distribution whose mass reaches ``top_p`` (the top token is always kept).

    Returns:
        ``[N, V]`` filtered logits.
    """
    _check(logits, temperature, top_k, top_p)
    vocab = logits.shape[-1]
    scaled = _scaled(logits, temperature)
    ordered = -jnp.sort(-scaled, axis=-1)  # [N, V] descending
    k = _effective_k(top_k, vocab)
    kth = jnp.take_along_axis(ordered, (k - 1)[:, None], axis=-1)  # [N, 1]
    ranks = jnp.arange(vocab)[None, :]
    ordered = jnp.where(ranks < k[:, None], ordered, -jnp.inf)
    probs = jax.nn.softmax(ordered, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs  # mass of strictly better tokens
    keep_sorted = (mass_before < top_p[:, None].astype(probs.dtype)) & (ranks < k[:, None])
    keep_sorted = keep_sorted.at[:, 0].set(True)
    # Smallest kept value is the nucleus threshold.
    p_threshold = jnp.min(jnp.where(keep_sorted, ordered, jnp.inf), axis=-1, keepdims=True)
    threshold = jnp.maximum(kth, p_threshold)
    return jnp.where(scaled >= threshold, scaled, -jnp.inf)


def filter_logits_reference(
    logits: jax.Array, temperature: jax.Array, top_k: jax.Array, top_p: jax.Array
) -> jax.Array:
    """Plain reference: rank every token by argsort and build the keep-mask from ranks."""
    _check(logits, temperature, top_k, top_p)
    vocab = logits.shape[-1]
    scaled = _scaled(logits, temperature)
    order = jnp.argsort(-scaled, axis=-1)  # token ids, best first
    rank_of = jnp.argsort(order, axis=-1)  # rank of each token
    k = _effective_k(top_k, vocab)
    in_k = rank_of < k[:, None]
    sorted_logits = jnp.take_along_axis(scaled, order, axis=-1)
    sorted_logits = jnp.where(jnp.arange(vocab)[None, :] < k[:, None], sorted_logits, -jnp.inf)
    sorted_probs = jax.nn.softmax(sorted_logits, axis=-1)
    before = jnp.concatenate(
        [jnp.zeros_like(sorted_probs[:, :1]), jnp.cumsum(sorted_probs, axis=-1)[:, :-1]], axis=-1
    )
    keep_rank = (before < top_p[:, None]) | (jnp.arange(vocab)[None, :] == 0)
    in_p = jnp.take_along_axis(keep_rank, rank_of, axis=-1)
    return jnp.where(in_k & in_p, scaled, -jnp.inf)
