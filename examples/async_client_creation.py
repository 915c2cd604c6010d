"""Async client creation: build several clients concurrently with ``asyncio.gather``.

Every factory has an ``*_async`` twin. The script creates a training client and several
sampling clients at once (one on the base model, others on sampler weights saved
concurrently), then samples from all of them concurrently, and checks that each client is its
own sampler and that identical greedy requests agree::

    python examples/async_client_creation.py
"""

from __future__ import annotations

import asyncio
import time

from _shared import example_model, expect

import tinkjax
from tinkjax import types


async def run(n_samplers: int, model: str) -> list[list[int]]:
    async with asyncio.timeout(600):
        service = tinkjax.ServiceClient()
        try:
            started = time.perf_counter()
            training, *samplers = await asyncio.gather(
                service.create_lora_training_client_async(model, rank=4, seed=0),
                *(service.create_sampling_client_async(base_model=model)
                  for _ in range(n_samplers)),
            )  # fmt: skip
            print(f"created 1 training + {n_samplers} sampling clients in "
                  f"{time.perf_counter() - started:.2f} s")  # fmt: skip
            saved = await asyncio.gather(
                *(training.save_weights_and_get_sampling_client_async(name=f"async-{i}")
                  for i in range(2))
            )  # fmt: skip
            tokenizer = training.get_tokenizer()
            prompt = types.ModelInput.from_ints(tokenizer.encode("In parallel,"))
            params = types.SamplingParams(max_tokens=8, temperature=0.0)
            everyone = [*samplers, *saved]
            responses = await asyncio.gather(
                *(s.sample_async(prompt, num_samples=1, sampling_params=params) for s in everyone)
            )
            tokens = [r.sequences[0].tokens for r in responses]
            for i, t in enumerate(tokens):
                print(f"client {i}: {tokenizer.decode(t)!r}")
            rest = service.create_rest_client()
            sampler_ids = (await rest.get_session_async(service.session_id)).sampler_ids
            expect(len(set(sampler_ids)) == len(everyone),
                   f"{len(everyone)} clients but {len(set(sampler_ids))} samplers")  # fmt: skip
            # greedy on the same base model: the same completion; a fresh adapter is the base
            expect(all(t == tokens[0] for t in tokens), "greedy completions differ")
            return tokens
        finally:
            await service.close_async()


def main(n_samplers: int = 3, base_model: str | None = None) -> list[list[int]]:
    """Runs the concurrent creation; returns each client's greedy completion."""
    return asyncio.run(run(n_samplers, base_model or example_model()))


if __name__ == "__main__":
    main()
