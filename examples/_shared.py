"""Helpers the example scripts share (not an example: ``run_all.sh`` skips ``_*.py``).

Every example runs offline on the embedded local backend when neither ``TINKER_API_KEY`` nor
``TINKER_BASE_URL`` is set, and unchanged against the service when they are. The model is
``$TINKJAX_EXAMPLE_MODEL``, else the tiny ``tinkjax/bytelm-micro`` locally, else
``meta-llama/Llama-3.2-1B`` on the service.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from tinkjax import types

__all__ = ["ExampleFailed", "example_model", "expect", "is_local", "next_token_datum"]


class ExampleFailed(AssertionError):
    """An example did not get the result it checks for."""


def expect(condition: object, message: str) -> None:
    """Raise :class:`ExampleFailed` (the script exits nonzero) unless ``condition`` holds."""
    if not condition:
        raise ExampleFailed(message)


def is_local() -> bool:
    """No service configured: the examples use the embedded local backend."""
    return not (os.environ.get("TINKER_API_KEY") or os.environ.get("TINKER_BASE_URL"))


def example_model() -> str:
    """The base model the examples use."""
    env = os.environ.get("TINKJAX_EXAMPLE_MODEL")
    if env:
        return env
    return "tinkjax/bytelm-micro" if is_local() else "meta-llama/Llama-3.2-1B"


def next_token_datum(tokens: Sequence[int], weights: Sequence[float] | None = None) -> Any:
    """A next-token-prediction datum: inputs ``tokens[:-1]``, targets ``tokens[1:]``."""
    tokens = list(tokens)
    n = len(tokens) - 1
    w = np.ones(n, np.float32) if weights is None else np.asarray(weights, np.float32)
    return types.Datum(
        model_input=types.ModelInput.from_ints(tokens[:-1]),
        loss_fn_inputs={
            "target_tokens": types.TensorData.from_numpy(np.asarray(tokens[1:], np.int64)),
            "weights": types.TensorData.from_numpy(w),
        },
    )
