"""Multi-LoRA matmul benchmark: per-job cost of one LoRA projection, forward and backward, as the
number of adapters (jobs) in a call grows.

A job is one run's step: 8 rows x 64 tokens through a ``d_in x d_out`` projection (bytelm-1m's
``128 x 384`` MLP input by default) with its own rank-8 adapter. Variants, same data:

- ``merged``: one adapter for all rows (``lora_linear`` with one slot: the merged weight) —
  the per-job floor, what a call of one job costs per job;
- ``gathered``: ``lora_linear`` with one slot per job (the per-row gathered einsum and
  ``segment_sum`` VJP);
- ``ragged``: ``lora_delta_grouped`` (``jax.lax.ragged_dot`` over rows sorted by adapter);
- ``chunked``: what the runtime does — a ``lax.scan`` over chunks of 256 tokens, each one
  adapter's, through the merged single-adapter matmul.

Reports the median time per job of ``jit(grad(...))`` and writes ``bench/results/lora_bench.json``.
Usage: ``python bench/lora_bench.py [--jobs 1,4,16,64] [--repeat 7]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tinkjax.kernels import lora_delta_grouped, lora_linear

ROWS, TOKENS, RANK, CHUNK_ROWS = 8, 64, 8, 4


def _variants(d_in: int, d_out: int, jobs: int) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    n = ROWS * jobs
    x = jnp.asarray(rng.normal(size=(n, TOKENS, d_in)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(d_in, d_out)) / np.sqrt(d_in), jnp.float32)
    a = jnp.asarray(rng.normal(size=(jobs, d_in, RANK)) * 0.1, jnp.float32)
    b = jnp.asarray(rng.normal(size=(jobs, RANK, d_out)) * 0.1, jnp.float32)
    slot = jnp.repeat(jnp.arange(jobs, dtype=jnp.int32), ROWS)
    scale = jnp.full((jobs,), 2.0, jnp.float32)
    g = jnp.asarray(rng.normal(size=(n, TOKENS, d_out)), jnp.float32)

    def merged(x: jax.Array, a: jax.Array, b: jax.Array) -> jax.Array:
        y = lora_linear(x, w, a[:1], b[:1], jnp.zeros_like(slot), scale[:1])
        return jnp.sum(y * g)

    def gathered(x: jax.Array, a: jax.Array, b: jax.Array) -> jax.Array:
        return jnp.sum(lora_linear(x, w, a, b, slot, scale) * g)

    def ragged(x: jax.Array, a: jax.Array, b: jax.Array) -> jax.Array:
        y = x @ w + lora_delta_grouped(x, a, b, slot, scale)
        return jnp.sum(y * g)

    def chunked(x: jax.Array, a: jax.Array, b: jax.Array) -> jax.Array:
        n_chunks = n // CHUNK_ROWS
        xs = x.reshape(n_chunks, CHUNK_ROWS, TOKENS, d_in)
        gs = g.reshape(n_chunks, CHUNK_ROWS, TOKENS, d_out)
        cs = slot.reshape(n_chunks, CHUNK_ROWS)[:, 0]

        def body(total: jax.Array, chunk: tuple[jax.Array, ...]) -> tuple[jax.Array, None]:
            xc, gc, s = chunk
            ac = jax.lax.dynamic_index_in_dim(a, s)
            bc = jax.lax.dynamic_index_in_dim(b, s)
            sc = jax.lax.dynamic_index_in_dim(scale, s)
            y = lora_linear(xc, w, ac, bc, jnp.zeros((CHUNK_ROWS,), jnp.int32), sc)
            return total + jnp.sum(y * gc), None

        return jax.lax.scan(body, jnp.zeros((), jnp.float32), (xs, gs, cs))[0]

    fns = {"merged": merged, "gathered": gathered, "ragged": ragged, "chunked": chunked}
    return {name: (jax.jit(jax.grad(f, argnums=(0, 1, 2))), (x, a, b)) for name, f in fns.items()}


def _time(fn: Any, args: Any, repeat: int) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", default="1,4,16,64")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--d-in", type=int, default=128)
    parser.add_argument("--d-out", type=int, default=384)
    args = parser.parse_args()
    rows = []
    for jobs in (int(j) for j in args.jobs.split(",")):
        row: dict[str, Any] = {"jobs": jobs}
        for name, (fn, fn_args) in _variants(args.d_in, args.d_out, jobs).items():
            row[f"{name}_ms_per_job"] = 1e3 * _time(fn, fn_args, args.repeat) / jobs
        rows.append(row)
        print(json.dumps(row), flush=True)
    out = {
        "command": "python bench/lora_bench.py --jobs " + args.jobs,
        "backend": jax.default_backend(),
        "load_average": os.getloadavg(),
        "shape": {"rows": ROWS, "tokens": TOKENS, "d_in": args.d_in, "d_out": args.d_out,
                  "rank": RANK},
        "rows": rows,
    }  # fmt: skip
    path = Path(__file__).parent / "results" / "lora_bench.json"
    path.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
