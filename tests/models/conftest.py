"""Shared helpers for the model tests: the micro preset, small datums, and runtimes."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tinkjax.models import DatumArrays, ModelRuntime

MICRO = "tinkjax/bytelm-micro"


def _ce_datum(tokens: np.ndarray, weights: np.ndarray | None = None) -> DatumArrays:
    """Next-token datum of ``tokens`` (input ``tokens[:-1]``, targets ``tokens[1:]``)."""
    n = len(tokens) - 1
    w = np.ones(n, np.float32) if weights is None else weights
    return DatumArrays(tokens[:-1], {"target_tokens": tokens[1:].astype(np.int64), "weights": w})


def _random_tokens(seed: int, n: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=n)


@pytest.fixture(scope="session")
def ce_datum() -> Callable[..., DatumArrays]:
    """``ce_datum(tokens, weights=None)``: a next-token cross-entropy datum."""
    return _ce_datum


@pytest.fixture(scope="session")
def random_tokens() -> Callable[[int, int], np.ndarray]:
    """``random_tokens(seed, n)``: ``n`` random byte tokens."""
    return _random_tokens


@pytest.fixture(scope="session")
def runtime() -> ModelRuntime:
    """A float32 micro runtime shared by the tests (each test uses its own adapter ids)."""
    return ModelRuntime(MICRO, max_lora_rank=8, adapter_slots=16)


@pytest.fixture(scope="session")
def runtime64() -> Iterator[ModelRuntime]:
    """A float64 micro runtime; use it inside ``with jax.enable_x64(True):``."""
    with jax.enable_x64(True):
        rt = ModelRuntime(MICRO, dtype=jnp.float64, max_lora_rank=8, adapter_slots=8)
    return rt
