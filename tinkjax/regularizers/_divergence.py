"""Divergences to other logprobs of the same target tokens: KL to a reference, consistency."""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp

from tinkjax.engine import LossBatch, Regularizer
from tinkjax.regularizers._common import Reduction, check_option, check_reduction, reduce_tokens

Array = jax.Array
Estimator = Literal["k1", "k3"]


def kl_value(batch: LossBatch, lp: Array, *, estimator: str, reduction: str) -> Array:
    """Per-token KL estimate to ``batch.reference_logprobs``, reduced."""
    ref = batch.reference_logprobs
    if estimator == "k1":
        per_token = lp - ref
    else:
        r = ref - lp
        per_token = jnp.exp(r) - r - 1.0
    return reduce_tokens(batch, per_token, reduction)


def consistency_value(batch: LossBatch, lp: Array, *, reduction: str) -> Array:
    """``reduce((lp − paired)²)`` against ``batch.paired_logprobs``."""
    d = lp - batch.paired_logprobs
    return reduce_tokens(batch, d * d, reduction)


def kl(
    *,
    weight: float,
    name: str = "kl",
    estimator: Estimator = "k3",
    reduction: Reduction = "sum",
) -> Regularizer:
    """KL(π ‖ π_ref) estimated on the target tokens from ``reference_logprobs``.

    With ``r_t = ref_t − lp_t`` (log of π_ref/π at the sampled token):

    * ``k1``: ``lp_t − ref_t = −r_t``; unbiased when tokens are sampled from π, high
      variance, can be negative per token; ∂/∂lp = 1.
    * ``k3``: ``exp(r_t) − r_t − 1 ≥ 0``; unbiased for tokens sampled from π, lower variance;
      ∂/∂lp = 1 − exp(r_t).

    Both are estimates *only* at tokens drawn from the current policy (the full distributions
    are not available); on off-policy data they are a per-token divergence penalty between
    the two logprobs, nothing more. Requires ``loss_fn_inputs["reference_logprobs"]``.
    """
    owner = f"regularizer {name!r}"
    check_option(owner, "estimator", estimator, ("k1", "k3"))
    check_reduction(owner, reduction)
    return Regularizer(
        name,
        kl_value,
        weight=weight,
        static={"estimator": estimator, "reduction": reduction},
        requires=("reference_logprobs",),
    )


def consistency(
    *, weight: float, name: str = "consistency", reduction: Reduction = "sum"
) -> Regularizer:
    """Squared difference to a paired datum's logprobs of the same target tokens.

    ``reduce_t (lp_t − paired_t)²``, ∂/∂lp = 2(lp − paired); the paired logprobs (e.g. of an
    augmented or paraphrased prompt, computed by another forward pass) are data: no gradient
    flows into them. Requires ``loss_fn_inputs["paired_logprobs"]``.
    """
    check_reduction(f"regularizer {name!r}", reduction)
    return Regularizer(
        name,
        consistency_value,
        weight=weight,
        static={"reduction": reduction},
        requires=("paired_logprobs",),
    )
