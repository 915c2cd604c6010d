"""Data shared by the engine's tests: ragged per-datum loss inputs and logprobs."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from tinkjax.engine import LossBatch

Inputs = list[dict[str, np.ndarray]]

RNG = np.random.default_rng(7)


def packing_data(
    lengths: tuple[int, ...], k: int | None = None
) -> tuple[list[dict[str, np.ndarray]], list[np.ndarray]]:
    """Per datum: target tokens, advantages and an extra key; logprobs ``[n]`` or ``[n, K]``."""
    inputs, lps = [], []
    for n in lengths:
        shape = (n,) if k is None else (n, k)
        lps.append(-RNG.exponential(size=shape).astype(np.float32))
        inputs.append(
            {
                "target_tokens": RNG.integers(0, 50, size=shape),
                "advantages": RNG.normal(size=shape).astype(np.float32),
                "custom_key": RNG.normal(size=shape).astype(np.float32),
            }
        )
    return inputs, lps


#: Datum lengths of :func:`step_data`.
STEP_LENGTHS = (6, 40, 11)


def step_data() -> tuple[list[dict[str, np.ndarray]], list[np.ndarray]]:
    """Three datums with target tokens and unit weights, and their logprobs."""
    rng = np.random.default_rng(5)
    lps = [-rng.exponential(size=n).astype(np.float32) for n in STEP_LENGTHS]
    inputs = [
        {"target_tokens": np.zeros(n, np.int64), "weights": np.ones(n, np.float32)}
        for n in STEP_LENGTHS
    ]
    return inputs, lps


def rl_data(
    lengths: tuple[int, ...], *, seed: int = 0, k: int | None = None, dtype: Any = np.float32
) -> tuple[Inputs, list[np.ndarray]]:
    """RL-style datums (weights, advantages, sampler logprobs) and their logprobs."""
    rng = np.random.default_rng(seed)
    inputs, lps = [], []
    for n in lengths:
        shape = (n,) if k is None else (n, k)
        lp = -rng.exponential(size=shape)
        lps.append(lp.astype(dtype))
        inputs.append(
            {
                "target_tokens": rng.integers(0, 100, size=shape),
                "weights": rng.normal(size=shape).astype(dtype),
                "advantages": rng.normal(size=shape).astype(dtype),
                # ±0.3 noise: a good share of ratios fall outside PPO's [0.8, 1.2]
                "logprobs": (lp + rng.normal(0, 0.3, size=shape)).astype(dtype),
            }
        )
    return inputs, lps


def stream_batch(rng: np.random.Generator) -> tuple[list[dict[str, np.ndarray]], list[np.ndarray]]:
    """A ragged PPO-style batch whose buckets vary from call to call."""
    n_seq = int(rng.integers(5, 9))  # sequence buckets 6 and 8
    lengths = rng.integers(1, 200, size=n_seq)  # token buckets 384 to 1536
    lps = [-rng.exponential(size=int(n)).astype(np.float32) for n in lengths]
    inputs = [
        {
            "target_tokens": np.zeros(lp.shape, np.int64),
            "logprobs": lp + np.float32(0.1),
            "advantages": np.ones(lp.shape, np.float32),
        }
        for lp in lps
    ]
    return inputs, lps


def reward_term(batch: LossBatch, lp: jax.Array, *, reward: jax.Array) -> jax.Array:
    """Σ reward·lp, the reward per sequence (from a ``prepare`` step)."""
    return batch.token_sum(batch.per_token(reward) * lp)
