"""Benchmark of the custom-loss engine (tinkjax.engine) on CPU.

Measures, for a PPO base plus K ∈ {1, 4, 16} regularizers cycling through four kinds (each
instance with its own parameter, so XLA cannot merge them) and T ∈ {4k, 64k, 1M} ragged
tokens:

* kernel time (the jitted program on device-resident inputs) of: ``plain`` (value and
  gradient of the total, no norms), ``grads`` (per-term gradient norms: a scan over the
  regularizers, one ``value_and_grad`` branch per regularizer), ``vmap`` (the same scan with
  one branch per kind of regularizer, iterating over its stacked parameters) and, up to 64k
  tokens, the ``jacrev`` test reference; medians over rounds, methods shuffled per round, 3 consecutive calls each;
  ratios are medians of per-round ratios;
* end-to-end step time (pack + device_put + program + checks + split back to NumPy);
* first-call time (trace + compile + run; persistent compilation cache off);
* ``memory_analysis()`` temporary bytes against argument + output bytes;
* a 40-step ragged stream (T ~ U[32k, 96k], B ~ U[48, 64]): compiles per bucket ladder, padded
  tokens, and recompiles when only weights and parameter values change.

Run ``python bench/engine_bench.py`` (full, a few minutes) or ``--quick``; writes
``bench/results/engine_bench.json`` and the "## Engine" section of ``bench/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import time
from pathlib import Path
from typing import Any

import _harness as H
import jax
import jax.numpy as jnp
import numpy as np

import tinkjax.regularizers as R
from tinkjax.engine import (
    Bucketing,
    CustomLossSpec,
    LossBatch,
    Regularizer,
    compute_custom_loss,
    pack_inputs,
    trace_count,
)
from tinkjax.engine._program import program
from tinkjax.engine._reference import jacobian_norms
from tinkjax.engine._step import build_step

ROOT = Path(__file__).resolve().parent


def tempered_surprisal(batch: LossBatch, lp: jax.Array, *, tau: jax.Array) -> jax.Array:
    """Entropy-like kind: Σ exp(lp/τ)·lp/τ."""
    x = lp / tau
    return batch.token_sum(jnp.exp(x) * x)


def scaled_k3(batch: LossBatch, lp: jax.Array, *, alpha: jax.Array) -> jax.Array:
    """KL-like kind: Σ exp(r) − r − 1, r = α(ref − lp)."""
    r = alpha * (batch.reference_logprobs - lp)
    return batch.token_sum(jnp.exp(r) - r - 1.0)


def clipped_sequence_variance(batch: LossBatch, lp: jax.Array, *, lo: jax.Array) -> jax.Array:
    """Sequence-level kind: variance across sequences of mean clip(lp, lo, 0)."""
    m = batch.seq_mean(jnp.clip(lp, lo, 0.0))
    c = m - batch.sequence_mean(m)
    return batch.sequence_mean(c * c)


def make_regularizers(k: int) -> list[Regularizer]:
    regs: list[Regularizer] = []
    for i in range(k):
        s = 0.01 * (i + 1)
        kind = i % 4
        if kind == 0:
            regs.append(R.l1(weight=0.1, center=-s, name=f"l1_{i}"))
        elif kind == 1:
            regs.append(
                Regularizer(f"ent_{i}", tempered_surprisal, weight=0.1, params={"tau": 1 + s})
            )
        elif kind == 2:
            regs.append(
                Regularizer(
                    f"kl_{i}",
                    scaled_k3,
                    weight=0.1,
                    params={"alpha": 1 + s},
                    requires=("reference_logprobs",),
                )
            )
        else:
            regs.append(
                Regularizer(
                    f"var_{i}", clipped_sequence_variance, weight=0.1, params={"lo": -5 - s}
                )
            )
    return regs


def make_data(
    total: int, n_seq: int, seed: int
) -> tuple[list[dict[str, np.ndarray]], list[np.ndarray]]:
    """Ragged lengths U[0.25, 1.75]·T/B summing to T; the study's data distribution."""
    rng = np.random.default_rng(seed)
    lengths = rng.uniform(0.25, 1.75, n_seq) * total / n_seq
    lengths = np.maximum(1, np.floor(lengths)).astype(int)
    lengths[-1] = max(1, lengths[-1] + total - lengths.sum())
    inputs, lps = [], []
    for n in lengths:
        lp = -rng.exponential(size=n).astype(np.float32)
        lps.append(lp)
        inputs.append(
            {
                "target_tokens": np.zeros(n, np.int64),
                "logprobs": np.minimum(lp + rng.normal(0, 0.1, n), 0).astype(np.float32),
                "reference_logprobs": np.minimum(lp + rng.normal(0, 0.3, n), 0).astype(np.float32),
                "advantages": np.full(n, rng.normal(), np.float32),
            }
        )
    return inputs, lps


def _runner(method: str, inputs: Any, lps: Any, regs: list[Regularizer]) -> tuple[Any, Any]:
    """(callable running the kernel once and blocking, lowered program)."""
    track = method in ("grads", "vmap")
    spec = CustomLossSpec(
        "ppo",
        regularizers=regs,
        track_grad_norms=track,
        norm_method="vmap" if method == "vmap" else "grads",
        dtype=np.float32,
        bucketing=Bucketing(),
    )
    step = build_step(spec, inputs, lps, prepared={})
    if method == "jacrev":
        lp, batch, base_params, _w, params, prepared = step.args
        lowered = jacobian_norms.lower(lp, batch, base_params, params, prepared, plan=step.plan)
        compiled = lowered.compile()
        return (
            lambda: jax.block_until_ready(compiled(lp, batch, base_params, params, prepared))
        ), compiled
    lowered = program.lower(*step.args, plan=step.plan)
    compiled = lowered.compile()
    return (lambda: jax.block_until_ready(compiled(*step.args))), compiled


def _median_ms(fn: Any, calls: int = 3) -> float:
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def bench_case(total: int, n_seq: int, k: int, rounds: int) -> dict[str, Any]:
    inputs, lps = make_data(total, n_seq, seed=total + k)
    regs = make_regularizers(k)
    methods = ["plain", "grads", "vmap"] + (["jacrev"] if total <= 65536 else [])
    row: dict[str, Any] = {"T": total, "B": n_seq, "K": k}
    runners, memory = {}, {}
    for m in methods:
        fn, compiled = _runner(m, inputs, lps, regs)
        fn()
        runners[m] = fn
        mem = compiled.memory_analysis()
        io = mem.argument_size_in_bytes + mem.output_size_in_bytes
        memory[m] = {
            "temp_MB": mem.temp_size_in_bytes / 1e6,
            "io_MB": io / 1e6,
            "temp_over_io": mem.temp_size_in_bytes / io,
        }
    per_round: dict[str, list[float]] = {m: [] for m in methods}
    for _ in range(rounds):
        order = methods[:]
        random.shuffle(order)
        for m in order:
            per_round[m].append(_median_ms(runners[m]))
    row["kernel_ms"] = {m: statistics.median(v) for m, v in per_round.items()}
    row["ratio_vs_plain"] = {
        m: statistics.median(a / b for a, b in zip(per_round[m], per_round["plain"], strict=True))
        for m in methods
    }
    row["memory"] = memory
    # end-to-end steps (host packing, device_put, program, finiteness checks, split)
    for track in (False, True):
        name = "step_ms_norms" if track else "step_ms_plain"
        compute_custom_loss(inputs, lps, "ppo", regularizers=regs, track_grad_norms=track)
        row[name] = statistics.median(
            _median_ms(
                lambda track=track: compute_custom_loss(  # type: ignore[misc]
                    inputs, lps, "ppo", regularizers=regs, track_grad_norms=track
                ),
                1,
            )
            for _ in range(max(3, rounds // 2))
        )
    return row


def first_call_seconds(k: int) -> dict[str, float]:
    """Trace + compile + run of a new program (64k tokens), per method."""
    out = {}
    inputs, lps = make_data(65536, 64, seed=99 + k)
    for name, track, method in (
        ("plain", False, "grads"),
        ("grads", True, "grads"),
        ("vmap", True, "vmap"),
    ):
        jax.clear_caches()
        t = time.perf_counter()
        compute_custom_loss(
            inputs,
            lps,
            "ppo",
            regularizers=make_regularizers(k),
            track_grad_norms=track,
            norm_method=method,
        )  # type: ignore[arg-type]
        out[name] = time.perf_counter() - t
    return out


def ragged_stream(growth: float, steps: int = 40) -> dict[str, Any]:
    rng = np.random.default_rng(123)
    bucketing = Bucketing(token_growth=growth, sequence_growth=growth)
    regs = make_regularizers(4)
    jax.clear_caches()
    before, real, padded = trace_count(), 0, 0
    t0 = time.perf_counter()
    for step in range(steps):
        inputs, lps = make_data(
            int(rng.integers(32768, 98304)), int(rng.integers(48, 65)), seed=step
        )
        compute_custom_loss(
            inputs, lps, "ppo", regularizers=regs, track_grad_norms=True, bucketing=bucketing
        )
        real += sum(len(lp) for lp in lps)
        padded += pack_inputs(inputs, lps, dtype=np.float32, bucketing=bucketing).logprobs.shape[0]
    elapsed = time.perf_counter() - t0
    compiles = trace_count() - before
    # only weights and parameter values change: no recompiles
    inputs, lps = make_data(65536, 64, seed=0)
    compute_custom_loss(
        inputs, lps, "ppo", regularizers=regs, track_grad_norms=True, bucketing=bucketing
    )
    mid = trace_count()
    for step in range(10):
        swept = [r.with_weight(0.01 * step) for r in regs]
        swept[0] = swept[0].with_params(center=-0.1 * step)
        compute_custom_loss(
            inputs, lps, "ppo", regularizers=swept, track_grad_norms=True, bucketing=bucketing
        )
    return {
        "growth": growth,
        "steps": steps,
        "compiles": compiles,
        "seconds": elapsed,
        "tokens_processed_over_real": padded / real,
        "recompiles_on_weight_sweep": trace_count() - mid,
    }


def write_markdown(result: dict[str, Any], command: str) -> None:
    lines = [
        "## Engine",
        "",
        f"Command: `{command}` ({result['machine']}, jax {result['jax']}). Kernel = the jitted "
        "program on device-resident inputs; step = `compute_custom_loss` end to end. Medians "
        "in ms; ratios are per-round medians against `plain` (value and gradient of the total, "
        "no norms). Base PPO; regularizers cycle through l1 / tempered surprisal / scaled k3 KL "
        "/ clipped sequence variance, each with its own parameter.",
        "",
        "| T | B | K | plain | grads | vmap | jacrev | grads/plain | vmap/plain | jacrev/plain "
        "| temp/IO plain | temp/IO grads | temp/IO vmap | step plain | step norms |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["cases"]:
        km, rt, mem = r["kernel_ms"], r["ratio_vs_plain"], r["memory"]
        jac = f"{km['jacrev']:.2f}" if "jacrev" in km else "–"
        jr = f"{rt['jacrev']:.2f}" if "jacrev" in rt else "–"
        lines.append(
            f"| {r['T']} | {r['B']} | {r['K']} | {km['plain']:.2f} | {km['grads']:.2f} | "
            f"{km['vmap']:.2f} | {jac} | {rt['grads']:.2f} | {rt['vmap']:.2f} | {jr} | "
            f"{mem['plain']['temp_over_io']:.2f} | {mem['grads']['temp_over_io']:.2f} | "
            f"{mem['vmap']['temp_over_io']:.2f} | {r['step_ms_plain']:.1f} | {r['step_ms_norms']:.1f} |"
        )
    lines += [
        "",
        "First call (trace + compile + run, 64k tokens, no persistent cache), seconds:",
        "",
        "| K | plain | grads | vmap |",
        "|---|---|---|---|",
    ]
    for k, fc in result["first_call_s"].items():
        lines.append(f"| {k} | {fc['plain']:.2f} | {fc['grads']:.2f} | {fc['vmap']:.2f} |")
    lines += [
        "",
        "Ragged stream (40 steps, T ~ U[32k, 96k], B ~ U[48, 64], K=4, norms on):",
        "",
        "| ladder growth | compiles | total s | tokens processed / real | recompiles on weight sweep |",
        "|---|---|---|---|---|",
    ]
    for s in result["streams"]:
        lines.append(
            f"| {s['growth']} | {s['compiles']} | {s['seconds']:.2f} | "
            f"{s['tokens_processed_over_real']:.2f} | {s['recompiles_on_weight_sweep']} |"
        )
    H.write_section("Engine", "\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4k and 64k tokens, K ∈ {1, 16}")
    args = parser.parse_args()
    random.seed(0)
    sizes = [(4096, 8), (65536, 64)] + ([] if args.quick else [(1 << 20, 256)])
    ks = [1, 16] if args.quick else [1, 4, 16]
    cases = []
    for total, n_seq in sizes:
        for k in ks:
            rounds = 5 if args.quick else (9 if total <= 65536 else 7)
            cases.append(bench_case(total, n_seq, k, rounds))
            print(json.dumps({x: cases[-1][x] for x in ("T", "K", "kernel_ms", "ratio_vs_plain")}))
    result = {
        "machine": f"{platform.machine()}, {jax.device_count()} {jax.default_backend()} device(s), "
        f"{__import__('os').cpu_count()} cores",
        "jax": jax.__version__,
        "quick": args.quick,
        "cases": cases,
        "first_call_s": {str(k): first_call_seconds(k) for k in ks},
        "streams": [ragged_stream(1.5), ragged_stream(2.0)],
    }
    out = ROOT / "results" / "engine_bench.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    write_markdown(result, "python bench/engine_bench.py" + (" --quick" if args.quick else ""))
    print(json.dumps(result["streams"]), json.dumps(result["first_call_s"]))


if __name__ == "__main__":
    main()
