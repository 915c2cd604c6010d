"""Tinker's built-in losses as pure functions returning unreduced per-token losses.

Every function maps target logprobs ``lp`` (shape ``[...]``: ``[T]``, ``[T, K]`` or a padded
``[B, T, K]`` batch) to a per-token loss of the same shape. Tinker's objective is the plain
**sum** of these values over tokens and datums: no mean, no normalisation by a weight total,
so weights summing to zero (the custom-loss linearisation) are handled exactly.

Notation: ``q`` = ``sampler_logprobs`` (the wire key ``logprobs``), ``A`` = advantages,
``r = exp(lp - q)`` the per-token importance ratio, ``sg`` = ``jax.lax.stop_gradient``.
Clip thresholds are ratio bounds (0.8 / 1.2 by default), not epsilons. Hyper-parameters may be
Python floats or traced arrays broadcastable to ``lp`` (so changing them never recompiles).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

__all__ = [
    "cispo",
    "cross_entropy",
    "dro",
    "gspo",
    "importance_sampling",
    "ppo",
    "stable_reinforce",
]


def cross_entropy(logprobs: jax.Array, *, weights: ArrayLike) -> jax.Array:
    """Weighted negative log-likelihood: ``-lp * weights``.

    Args:
        logprobs: ``[...]`` float, target-token logprobs.
        weights: ``[...]`` float, arbitrary (negative values and zero sums are fine).
    """
    return -logprobs * weights


def importance_sampling(
    logprobs: jax.Array, *, sampler_logprobs: ArrayLike, advantages: ArrayLike
) -> jax.Array:
    """REINFORCE with an importance ratio: ``-exp(lp - q) * A``."""
    return -jnp.exp(logprobs - sampler_logprobs) * advantages


def ppo(
    logprobs: jax.Array,
    *,
    sampler_logprobs: ArrayLike,
    advantages: ArrayLike,
    clip_low_threshold: ArrayLike = 0.8,
    clip_high_threshold: ArrayLike = 1.2,
) -> jax.Array:
    """Clipped surrogate: ``-min(r * A, clip(r, lo, hi) * A)``, ``r = exp(lp - q)``."""
    ratio = jnp.exp(logprobs - sampler_logprobs)
    clipped = jnp.clip(ratio, clip_low_threshold, clip_high_threshold)
    return -jnp.minimum(ratio * advantages, clipped * advantages)


def cispo(
    logprobs: jax.Array,
    *,
    sampler_logprobs: ArrayLike,
    advantages: ArrayLike,
    clip_low_threshold: ArrayLike = 0.8,
    clip_high_threshold: ArrayLike = 1.2,
) -> jax.Array:
    """Clipped importance-sampling policy gradient: ``-sg(clip(r, lo, hi)) * lp * A``."""
    ratio = jnp.exp(logprobs - sampler_logprobs)
    weight = jax.lax.stop_gradient(jnp.clip(ratio, clip_low_threshold, clip_high_threshold))
    return -weight * logprobs * advantages


def dro(
    logprobs: jax.Array, *, sampler_logprobs: ArrayLike, advantages: ArrayLike, beta: ArrayLike
) -> jax.Array:
    """Direct reward optimisation: ``-(lp * A - 0.5 * beta * (lp - q) ** 2)``."""
    delta = logprobs - sampler_logprobs
    return -(logprobs * advantages - 0.5 * beta * delta * delta)


def gspo(
    logprobs: jax.Array,
    *,
    sampler_logprobs: ArrayLike,
    advantages: ArrayLike,
    sequence_ratio_mask: ArrayLike,
    segment_ids: jax.Array | None = None,
    num_segments: int | None = None,
    clip_low_threshold: ArrayLike = 0.8,
    clip_high_threshold: ArrayLike = 1.2,
) -> jax.Array:
    """Group-sequence policy optimisation: PPO on a per-sequence ratio.

    With ``m`` = ``sequence_ratio_mask`` and, for sequence ``i`` (the tokens whose segment id is
    ``i``), ``n_i = sum_t m_t`` and ``s_i = exp(sum_t m_t (lp_t - q_t) / n_i)``, the loss of
    token ``t`` of sequence ``i`` is::

        s_it = sg(s_i) * exp(lp_t - sg(lp_t))          # value s_i, d s_it = s_i * d lp_t
        loss_t = -min(s_it * A_t, clip(s_it, lo, hi) * A_t) * m_t / n_i

    Summed over a sequence with a constant advantage this is ``-min(s_i A, clip(s_i) A)``, and
    its gradient is ``-A * s_i * mean_t(d lp_t)`` = ``-A * d s_i`` (zero where the clip binds).
    Sequences with ``n_i = 0`` contribute nothing (the denominator is made safe).

    Args:
        logprobs: ``[...]`` float target logprobs.
        sampler_logprobs, advantages, sequence_ratio_mask: ``[...]`` float, same shape.
        segment_ids: ``[...]`` int sequence id of every token in ``[0, num_segments)``;
            ``None`` means the whole array is one sequence.
        num_segments: static number of sequences (required with ``segment_ids``).
        clip_low_threshold, clip_high_threshold: ratio bounds.

    Returns:
        ``[...]`` per-token loss.
    """
    shape = logprobs.shape
    if segment_ids is None:
        seg = jnp.zeros(shape, jnp.int32)
        n_seg = 1
    else:
        if num_segments is None:
            raise ValueError("gspo: num_segments is required when segment_ids is given")
        if segment_ids.shape != shape:
            raise ValueError(f"gspo: segment_ids shape {segment_ids.shape} != logprobs {shape}")
        seg, n_seg = segment_ids.astype(jnp.int32), num_segments
    mask = jnp.broadcast_to(jnp.asarray(sequence_ratio_mask, logprobs.dtype), shape)
    flat_seg = seg.reshape(-1)
    log_ratio = (logprobs - sampler_logprobs) * mask
    total = jax.ops.segment_sum(log_ratio.reshape(-1), flat_seg, num_segments=n_seg)
    count = jax.ops.segment_sum(mask.reshape(-1), flat_seg, num_segments=n_seg)
    safe_count = jnp.where(count > 0, count, 1.0)
    seq_ratio = jnp.exp(total / safe_count)  # [n_seg]
    token_ratio = jax.lax.stop_gradient(seq_ratio[seg]) * jnp.exp(
        logprobs - jax.lax.stop_gradient(logprobs)
    )
    clipped = jnp.clip(token_ratio, clip_low_threshold, clip_high_threshold)
    surrogate = jnp.minimum(token_ratio * advantages, clipped * advantages)
    return -surrogate * mask / safe_count[seg]


def stable_reinforce(
    logprobs: jax.Array,
    *,
    sampler_logprobs: ArrayLike,
    advantages: ArrayLike,
    sampled_mask: ArrayLike,
    clip_high_threshold: ArrayLike = 2.0,
) -> jax.Array:
    """REINFORCE with a truncated importance weight against the sampler's recorded logprobs.

    With ``m`` = ``sampled_mask`` (1 on tokens the sampler produced, 0 elsewhere) and
    ``w = min(exp(lp - q), C)`` (``C`` = ``clip_high_threshold``)::

        loss_t = -sg(w_t) * exp(lp_t - sg(lp_t)) * A_t * m_t   # value -w A m, d = -w A m d lp

    Below the cap this is ``importance_sampling`` (value ``-r A``, gradient ``-r A d lp``);
    above it the weight stays at ``C`` instead of growing without bound, so stale or
    low-precision samples cannot blow up a step. The log-ratio is capped before ``exp`` so no
    ratio overflows. On the server ``q`` and ``m`` come from what was recorded when the tokens
    were sampled (``record_stability_info=True``), never from the request.

    Args:
        logprobs: ``[...]`` learner target logprobs.
        sampler_logprobs, advantages, sampled_mask: ``[...]`` float, same shape.
        clip_high_threshold: ratio cap ``C`` (> 0).
    """
    log_cap = jnp.log(jnp.asarray(clip_high_threshold, logprobs.dtype))
    log_ratio = jnp.minimum(logprobs - sampler_logprobs, log_cap)
    weight = jax.lax.stop_gradient(jnp.exp(log_ratio))
    unit = jnp.exp(logprobs - jax.lax.stop_gradient(logprobs))
    return -weight * unit * advantages * sampled_mask
