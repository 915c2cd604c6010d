"""Shared fixtures: one local server for the sweep tests (micro model) and a small dataset."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from tinkjax.client import ServiceClient
from tinkjax.server import ServerHandle, start
from tinkjax.types import Datum, ModelInput, TensorData

MICRO = "tinkjax/bytelm-micro"
TEXT = b"the quick brown fox jumps over the lazy dog; a lighthouse stood by the sea. " * 8


def datums(n: int = 8, length: int = 24) -> list[Datum]:
    """``n`` next-token windows of a fixed text (bytes as tokens)."""
    arr = np.frombuffer(TEXT, np.uint8).astype(np.int64)
    return [
        Datum(
            model_input=ModelInput.from_ints(arr[5 * i : 5 * i + length].tolist()),
            loss_fn_inputs={
                "target_tokens": TensorData.from_numpy(arr[5 * i + 1 : 5 * i + length + 1]),
                "weights": TensorData.from_numpy(np.ones(length, np.float32)),
            },
        )
        for i in range(n)
    ]


@pytest.fixture(scope="session")
def sweep_server() -> Iterator[ServerHandle]:
    handle = start(models=[MICRO])
    try:
        yield handle
    finally:
        handle.stop()


@pytest.fixture
def service(sweep_server: ServerHandle) -> Iterator[ServiceClient]:
    sc = ServiceClient(base_url=sweep_server.base_url, api_key="tml-sweep-tests")
    yield sc
    sc.close()
