"""Shared pieces of the built-in regularizers: what they act on and how they reduce."""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp

from tinkjax.engine import EngineInputError, LossBatch

Array = jax.Array
Target = Literal["logprobs", "probs"]
Reduction = Literal["sum", "mean", "seq_mean"]

_TARGETS = ("logprobs", "probs")
_REDUCTIONS = ("sum", "mean", "seq_mean")


def check_option(owner: str, option: str, value: str, allowed: tuple[str, ...]) -> None:
    """``EngineInputError`` naming the regularizer and option unless ``value`` is allowed."""
    if value not in allowed:
        raise EngineInputError(f"{owner}: {option} must be one of {list(allowed)}, got {value!r}")


def check_target(owner: str, target: str) -> None:
    """Validate a ``target`` option."""
    check_option(owner, "target", target, _TARGETS)


def check_reduction(owner: str, reduction: str) -> None:
    """Validate a ``reduction`` option."""
    check_option(owner, "reduction", reduction, _REDUCTIONS)


def on_target(lp: Array, target: str) -> Array:
    """``lp`` itself, or the target-token probabilities ``exp(lp)``."""
    return jnp.exp(lp) if target == "probs" else lp


def reduce_tokens(batch: LossBatch, x: Array, reduction: str) -> Array:
    """Reduce a per-token quantity over real tokens.

    * ``"sum"``: Σ over every token of every sequence (Tinker's convention for losses).
    * ``"mean"``: that sum divided by the number of real tokens in the batch.
    * ``"seq_mean"``: length-normalised per sequence, then averaged over sequences:
      ``(1/B) Σ_b (1/n_b) Σ_{t∈b} x_t`` (every sequence weighs the same, whatever its length).
    """
    if reduction == "sum":
        return batch.token_sum(x)
    if reduction == "mean":
        return batch.token_mean(x)
    return batch.sequence_mean(batch.seq_mean(x))
