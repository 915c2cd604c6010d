"""Micro-benchmark of ``tinkjax.models.ModelRuntime`` called directly (no HTTP).

Default model (``tinkjax/bytelm-1m``), one adapter of rank 32 (the official SDK's default),
8 datums x 64 tokens of ``cross_entropy``:

* ``sync``: one synchronous train step = ``forward_backward`` + ``optim_step`` (both return
  host values, so each call is complete when it returns);
* ``fwdbwd`` / ``optim``: the two halves on their own;
* ``sample``: 4 samples x 16 tokens of one 32-token prompt from a snapshot of the adapter
  (seeded, temperature 1, no stop);
* resident memory (RSS) after warm-up and after 100 further steps.

Each call's wall time and process CPU time (all threads) are recorded; CPU time is the
steadier number when other jobs load the machine.

Every timing is the median of warm calls. Each measured implementation runs in its own worker
subprocess (``--worker``); with ``--baseline DIR`` (a copy of the ``tinkjax`` package, with
``kernels/`` at ``tinkjax/kernels``) the baseline and the working tree are measured in
alternating blocks, so machine load hits both alike. Writes
``bench/results/runtime_bench.json``.

Run: ``python bench/runtime_bench.py [--rounds 6] [--baseline /path/to/copy]``; a baseline
copy of a commit: ``git archive HEAD tinkjax kernels | tar -x -C DIR`` then
``mv DIR/kernels DIR/tinkjax/kernels``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
REPO = ROOT.parent

BATCH, LENGTH, RANK = 8, 64, 32
SAMPLES, SAMPLE_TOKENS, PROMPT = 4, 16, 32


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _load() -> float:
    return os.getloadavg()[0]


class _Worker:
    """A runtime with one adapter, a fixed batch and a fixed sampling job."""

    def __init__(self) -> None:
        import numpy as np

        from tinkjax.models import (
            DEFAULT_MODEL,
            AdamHyper,
            DatumArrays,
            FwdBwdItem,
            ModelRuntime,
            SampleJob,
        )

        self.rt = ModelRuntime(DEFAULT_MODEL)
        self.rt.create_adapter("bench", rank=RANK, seed=0)
        rng = np.random.default_rng(0)
        datums = []
        for _ in range(BATCH):
            toks = rng.integers(0, 256, size=LENGTH + 1)
            datums.append(
                DatumArrays(
                    toks[:-1],
                    {
                        "target_tokens": toks[1:].astype(np.int64),
                        "weights": np.ones(LENGTH, np.float32),
                    },
                )
            )
        self.items = [FwdBwdItem(adapter_id="bench", datums=datums, loss_fn="cross_entropy")]
        self.hyper = AdamHyper(learning_rate=1e-4)
        prompt = rng.integers(0, 256, size=PROMPT)
        self.job = SampleJob(
            snapshot=None, prompt=prompt, num_samples=SAMPLES, max_tokens=SAMPLE_TOKENS,
            temperature=1.0, seed=1,
        )  # fmt: skip
        self.snap_job: Any = None

    def fwdbwd(self) -> float:
        t0 = time.perf_counter()
        self.rt.forward_backward(self.items, forward_only=False)
        return time.perf_counter() - t0

    def optim(self) -> float:
        t0 = time.perf_counter()
        self.rt.optim_step("bench", self.hyper)
        return time.perf_counter() - t0

    def sync(self) -> float:
        t0 = time.perf_counter()
        self.rt.forward_backward(self.items, forward_only=False)
        self.rt.optim_step("bench", self.hyper)
        return time.perf_counter() - t0

    def sample(self) -> float:
        if self.snap_job is None:
            from dataclasses import replace

            self.snap_job = replace(self.job, snapshot=self.rt.snapshot("bench"))
        t0 = time.perf_counter()
        out = self.rt.sample(self.snap_job)
        assert len(out.sequences) == SAMPLES
        return time.perf_counter() - t0

    def run(self, what: str, n: int) -> tuple[list[float], list[float]]:
        """``n`` calls of ``what``: (wall seconds, process CPU seconds) of each."""
        fn = getattr(self, what)
        walls, cpus = [], []
        for _ in range(n):
            c0 = time.process_time()
            walls.append(fn())
            cpus.append(time.process_time() - c0)
            if what == "fwdbwd":  # keep the accumulator bounded
                self.optim()
        return walls, cpus


def worker_main() -> None:
    """Serve ``{"op": ..., "n": ...}`` lines on stdin with JSON lines on stdout."""
    t0 = time.perf_counter()
    w = _Worker()
    for _ in range(3):
        w.sync()
        w.sample()
    ready = {"warmup_s": time.perf_counter() - t0, "rss_mb": _rss_mb()}
    print(json.dumps(ready), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        if req["op"] == "quit":
            break
        if req["op"] == "rss":
            print(json.dumps({"rss_mb": _rss_mb()}), flush=True)
            continue
        times, cpu = w.run(req["op"], int(req["n"]))
        print(json.dumps({"times": times, "cpu": cpu, "load": _load()}), flush=True)


class _Proc:
    def __init__(self, name: str, pythonpath: str | None) -> None:
        env = dict(os.environ)
        env.setdefault("TINKJAX_JAX_CACHE", str(REPO / ".jax_cache"))
        if pythonpath:
            env["PYTHONPATH"] = pythonpath + os.pathsep + env.get("PYTHONPATH", "")
        self.name = name
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--worker"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd="/tmp",
        )  # fmt: skip
        self.ready = self._read()

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {self.name} died")
        out: dict[str, Any] = json.loads(line)
        return out

    def ask(self, op: str, n: int = 0) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": op, "n": n}) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        with contextlib.suppress(RuntimeError, BrokenPipeError):
            self.ask("quit")
        self.proc.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=6, help="alternating blocks per variant")
    parser.add_argument("--per-block", type=int, default=10, help="calls per block")
    parser.add_argument("--baseline", help="PYTHONPATH of a baseline copy of tinkjax")
    parser.add_argument("--memory-steps", type=int, default=100)
    parser.add_argument("--out", default=str(ROOT / "results" / "runtime_bench.json"))
    args = parser.parse_args()
    if args.worker:
        worker_main()
        return

    variants: dict[str, str | None] = {}
    if args.baseline:
        variants["baseline"] = args.baseline
    variants["current"] = None
    procs = {name: _Proc(name, path) for name, path in variants.items()}
    ops = ("sync", "fwdbwd", "optim", "sample")
    times: dict[str, dict[str, list[float]]] = {v: {op: [] for op in ops} for v in procs}
    cpus: dict[str, dict[str, list[float]]] = {v: {op: [] for op in ops} for v in procs}
    loads: list[float] = [_load()]
    try:
        for r in range(args.rounds):
            order = list(procs) if r % 2 == 0 else list(reversed(procs))
            for op in ops:
                for name in order:
                    got = procs[name].ask(op, args.per_block)
                    times[name][op].extend(got["times"])
                    cpus[name][op].extend(got["cpu"])
                    loads.append(got["load"])
        memory = {}
        for name, p in procs.items():
            before = p.ask("rss")["rss_mb"]
            p.ask("sync", args.memory_steps)
            after = p.ask("rss")["rss_mb"]
            memory[name] = {"after_warmup_mb": p.ready["rss_mb"], "before_100_mb": before,
                            "after_100_mb": after}  # fmt: skip
    finally:
        for p in procs.values():
            p.close()

    results: dict[str, Any] = {
        "config": {
            "model": "tinkjax/bytelm-1m", "batch": BATCH, "length": LENGTH, "rank": RANK,
            "samples": SAMPLES, "sample_tokens": SAMPLE_TOKENS, "prompt": PROMPT,
            "rounds": args.rounds, "per_block": args.per_block,
        },
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "load_min": min(loads), "load_max": max(loads)},
        "variants": {},
    }  # fmt: skip
    for name in procs:
        med = {op: 1e3 * statistics.median(ts) for op, ts in times[name].items()}
        results["variants"][name] = {
            "median_ms": med,
            "p10_ms": {op: 1e3 * sorted(ts)[len(ts) // 10] for op, ts in times[name].items()},
            "cpu_median_ms": {op: 1e3 * statistics.median(ts) for op, ts in cpus[name].items()},
            "warmup_s": procs[name].ready["warmup_s"],
            "memory": memory[name],
        }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"load average {min(loads):.2f}-{max(loads):.2f}")
    header = f"{'variant':<10}" + "".join(f"{op:>10}" for op in ops) + f"{'rss MB':>16}"
    print(header + "   (median wall ms; process CPU ms below)")
    for name, res in results["variants"].items():
        mem = res["memory"]
        print(
            f"{name:<10}"
            + "".join(f"{res['median_ms'][op]:>10.1f}" for op in ops)
            + f"{mem['before_100_mb']:>8.0f}->{mem['after_100_mb']:.0f}"
        )
        print(f"{'  cpu':<10}" + "".join(f"{res['cpu_median_ms'][op]:>10.1f}" for op in ops))


if __name__ == "__main__":
    main()
