"""L1 and L2 penalties on target-token logprobs or probabilities."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from tinkjax.engine import LossBatch, Regularizer
from tinkjax.regularizers._common import (
    Reduction,
    Target,
    check_reduction,
    check_target,
    on_target,
    reduce_tokens,
)

Array = jax.Array


def l1_value(batch: LossBatch, lp: Array, *, center: Array, target: str, reduction: str) -> Array:
    """``reduce(|x − center|)`` with ``x = lp`` or ``exp(lp)``."""
    return reduce_tokens(batch, jnp.abs(on_target(lp, target) - center), reduction)


def l2_value(batch: LossBatch, lp: Array, *, center: Array, target: str, reduction: str) -> Array:
    """``reduce((x − center)²)`` with ``x = lp`` or ``exp(lp)``."""
    d = on_target(lp, target) - center
    return reduce_tokens(batch, d * d, reduction)


def l1(
    *,
    weight: float,
    name: str = "l1",
    target: Target = "logprobs",
    center: float = 0.0,
    reduction: Reduction = "sum",
) -> Regularizer:
    """L1 penalty ``reduce_t |x_t − c|``, ``x = lp`` (``target="logprobs"``) or ``p = exp(lp)``.

    On logprobs (``lp ≤ 0``, ``c = 0``) this is the total surprisal of the target tokens,
    ∂/∂lp = −1 per token: it pushes target tokens' probability up. On probabilities it
    pulls ``p`` towards ``c``. ``center`` is traced (sweeping it never recompiles).
    """
    owner = f"regularizer {name!r}"
    check_target(owner, target)
    check_reduction(owner, reduction)
    return Regularizer(
        name,
        l1_value,
        weight=weight,
        params={"center": center},
        static={"target": target, "reduction": reduction},
    )


def l2(
    *,
    weight: float,
    name: str = "l2",
    target: Target = "logprobs",
    center: float = 0.0,
    reduction: Reduction = "sum",
) -> Regularizer:
    """L2 penalty ``reduce_t (x_t − c)²``, ``x = lp`` or ``p = exp(lp)``; ∂/∂x = 2(x − c)."""
    owner = f"regularizer {name!r}"
    check_target(owner, target)
    check_reduction(owner, reduction)
    return Regularizer(
        name,
        l2_value,
        weight=weight,
        params={"center": center},
        static={"target": target, "reduction": reduction},
    )
