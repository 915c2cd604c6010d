"""Sampled-token surprisal ("entropy") and sequence-level terms."""

from __future__ import annotations

import jax

from tinkjax.engine import LossBatch, Regularizer
from tinkjax.regularizers._common import Reduction, check_reduction, reduce_tokens

Array = jax.Array


def surprisal_value(batch: LossBatch, lp: Array, *, reduction: str) -> Array:
    """``reduce(−lp)``."""
    return reduce_tokens(batch, -lp, reduction)


def sequence_variance_value(batch: LossBatch, lp: Array) -> Array:
    """Population variance over real sequences of their mean target-token logprob."""
    means = batch.seq_mean(lp)
    centred = means - batch.sequence_mean(means)
    return batch.sequence_mean(centred * centred)


def entropy(*, weight: float, name: str = "entropy", reduction: Reduction = "mean") -> Regularizer:
    """Sampled-token surprisal ``reduce_t(−lp_t)``: the Monte-Carlo entropy estimate.

    When the target tokens were sampled from the current policy, ``E[−lp]`` is its entropy;
    this is that single-sample estimate, **not** the entropy over the vocabulary (the full
    distribution is not available). Its gradient, −1 per token, lowers the logprob of the
    sampled tokens: a *negative* weight (a bonus on surprisal, since the loss is minimised)
    encourages exploration; a positive weight sharpens the policy on its own samples.
    """
    check_reduction(f"regularizer {name!r}", reduction)
    return Regularizer(name, surprisal_value, weight=weight, static={"reduction": reduction})


def sequence_variance(*, weight: float, name: str = "sequence_variance") -> Regularizer:
    """Variance across sequences of the per-sequence mean logprob.

    With ``m_b = (1/n_b) Σ_{t∈b} lp_t`` (length-normalised) and ``μ = (1/B) Σ_b m_b``:
    ``(1/B) Σ_b (m_b − μ)²``, ∂/∂lp_t = 2(m_b − μ)/(B·n_b) for ``t ∈ b``. Penalising it evens
    out how confident the model is across the sequences of a batch.
    """
    return Regularizer(name, sequence_variance_value, weight=weight)
