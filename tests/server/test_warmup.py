"""The server's warm-up: with TINKJAX_WARMUP, a 16-run sweep compiles nothing on the server once
the warm-up is done, and the engine compiles one program per plan and run bucket."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

import tinkjax.regularizers as R
from tinkjax.client import ServiceClient
from tinkjax.engine import CustomLossSpec, trace_count
from tinkjax.models import trace_counts
from tinkjax.server import start
from tinkjax.server._models_registry import warmup_shapes
from tinkjax.types import AdamParams, Datum, ModelInput, TensorData

MICRO = "tinkjax/bytelm-micro"


def datums(n: int, length: int) -> list[Datum]:
    """``n`` next-token windows of random bytes."""
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        toks = rng.integers(0, 256, size=length + 1)
        out.append(
            Datum(
                model_input=ModelInput.from_ints(toks[:-1].tolist()),
                loss_fn_inputs={
                    "target_tokens": TensorData.from_numpy(toks[1:]),
                    "weights": TensorData.from_numpy(np.ones(length, np.float32)),
                },
            )
        )
    return out


def test_warmup_shapes_parse_and_refuse() -> None:
    assert warmup_shapes("cross_entropy:64, ppo:128") == [("cross_entropy", 64), ("ppo", 128)]
    assert warmup_shapes("off") == []
    assert warmup_shapes("") == []
    with pytest.raises(ValueError, match="'ppo' is not loss_fn:length"):
        warmup_shapes("cross_entropy:64,ppo")


@pytest.mark.slow
def test_a_16_run_sweep_compiles_nothing_after_the_warmup(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TINKJAX_WARMUP", "cross_entropy:24")
    handle = start(models=[MICRO])
    sc = ServiceClient(base_url=handle.base_url, api_key="tml-warmup-test")
    try:
        clients = [
            sc.create_lora_training_client(MICRO, rank=4, seed=100 + i).result() for i in range(16)
        ]
        runtime = handle.backend.models.runtime(MICRO)  # created by the first create_model
        assert runtime.wait_warmup(timeout=600)
        data = datums(4, length=24)
        weights = [0.01 * (1 + i) for i in range(16)]  # different weights: one plan
        specs = [
            CustomLossSpec(
                "cross_entropy", regularizers=[R.entropy(weight=w)], track_grad_norms=True
            )
            for w in weights
        ]

        async def step(tc: Any, spec: CustomLossSpec) -> None:
            fb = await tc.forward_backward_custom_async(data, spec)
            opt = await tc.optim_step_async(AdamParams(learning_rate=1e-3))
            await fb
            await opt

        async def sweep_step() -> None:
            await asyncio.gather(*(step(tc, s) for tc, s in zip(clients, specs, strict=True)))

        server_before, engine_before = trace_counts(), trace_count()
        asyncio.run(sweep_step())
        asyncio.run(sweep_step())
        asyncio.run(sweep_step())
        assert trace_counts() == server_before  # nothing compiled on the server mid-sweep
        # the engine: one program per plan and run bucket (how many runs a dispatch finds
        # ready together: buckets 16, 8, 4, 2, 1 at most; fewer if compiled before)
        assert trace_count() - engine_before <= 5
    finally:
        sc.close()
        handle.stop()
