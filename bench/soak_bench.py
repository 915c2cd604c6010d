"""Soak of the local backend: many clients training, sampling, opening and closing sessions.

``--clients`` workers (default 32; every other one uses the official ``tinker`` SDK when it is
installed, the rest the tinkjax client) run against one ``tinkjax serve`` subprocess for
``--seconds`` (default 300). Each worker loops over sessions: open a session, create a LoRA
training client (same seed and data for all), run ``--steps`` pipelined steps
(``forward_backward`` + ``optim_step``), take a sampler snapshot and sample from it, save a
named state now and then, close the session. One worker in four is a *large sampler* instead:
it keeps ``--large-samples`` samples × ``--large-tokens`` tokens requests running; every worker
also times a *small sample* (1 sample × 8 tokens from the base model) between steps.

Reported: calls and failed calls (must be 0); per-model order (every model is trained from the
same seed on the same batches, so the loss of step ``i`` must be the same for every model — a
reordered, dropped or twice-applied step shows as a different loss); the server's resident
memory over time (``VmRSS`` of ``/proc/<pid>/status``, or psutil) with its least-squares slope
after ``--warmup`` seconds (MB/min); small-sample latency p50 / p99 while large samples run.

Run ``python bench/soak_bench.py`` (5 minutes, 32 clients) or e.g.
``python bench/soak_bench.py --seconds 60 --clients 8``; writes ``bench/results/soak_bench.json``
and the "## Soak" section of ``bench/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import _harness as H
import numpy as np

import tinkjax.types as T
from tinkjax.client import ServiceClient

try:
    import tinker
except ImportError:  # the official SDK is optional
    tinker = None


def rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` in MB (psutil when installed, else ``/proc``)."""
    try:
        import psutil
    except ImportError:
        return H.rss_mb(pid)
    return float(psutil.Process(pid).memory_info().rss) / 2**20


@dataclass
class Stats:
    """What every worker records (guarded by ``lock``)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    calls: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    losses: dict[int, list[float]] = field(default_factory=dict)  # step -> loss of each model
    small_s: list[float] = field(default_factory=list)  # small-sample latency, large ones running
    large_running: int = 0
    sessions: Counter[str] = field(default_factory=Counter)

    def ok(self, kind: str, n: int = 1) -> None:
        with self.lock:
            self.calls[kind] += n

    def fail(self, kind: str, exc: BaseException) -> None:
        with self.lock:
            self.calls[kind] += 1
            self.failures.append(f"{kind}: {type(exc).__name__}: {exc}"[:500])


class Worker:
    """One client: ``sdk`` is ``"tinkjax"`` or ``"tinker"``; ``role`` ``"train"`` or ``"large"``."""

    def __init__(self, i: int, sdk: str, role: str, args: argparse.Namespace, url: str) -> None:
        self.i, self.sdk, self.role, self.args, self.url = i, sdk, role, args, url
        self.types: Any = T if sdk == "tinkjax" else tinker.types
        self.batches = [
            H.training_batch(self.types, n=args.batch, length=args.length, seed=s)
            for s in range(args.steps)
        ]

    def service(self) -> Any:
        if self.sdk == "tinkjax":
            return ServiceClient(base_url=self.url, api_key="tml-soak")
        return tinker.ServiceClient(base_url=self.url, api_key="tml-soak")

    def close(self, service: Any, stats: Stats) -> None:
        try:
            if self.sdk == "tinkjax":
                service.close()
            else:  # the official SDK's close takes a status and answers a future
                service.close("success").result()
            stats.ok("close_session")
        except Exception as exc:
            stats.fail("close_session", exc)

    def small_sample(self, service: Any, sampler: Any, stats: Stats) -> None:
        params = self.types.SamplingParams(max_tokens=8, temperature=0.0)
        prompt = self.types.ModelInput.from_ints(list(b"soak "))
        t0 = time.monotonic()
        with stats.lock:
            large = stats.large_running > 0
        try:
            sampler.sample(prompt, 1, params).result()
        except Exception as exc:
            stats.fail("small_sample", exc)
            return
        stats.ok("small_sample")
        if large:
            with stats.lock:
                stats.small_s.append(time.monotonic() - t0)

    def run(self, deadline: float, stats: Stats) -> None:
        try:
            while time.monotonic() < deadline:
                (self.large if self.role == "large" else self.train)(deadline, stats)
        except Exception as exc:  # a bug in the bench itself, not a failed call
            stats.fail("worker", exc)
            traceback.print_exc()

    def large(self, deadline: float, stats: Stats) -> None:
        service = self.service()
        stats.sessions[self.sdk] += 1
        try:
            sampler = H.resolve(service.create_sampling_client(base_model=self.args.model))
            params = self.types.SamplingParams(
                max_tokens=self.args.large_tokens, temperature=1.0, seed=self.i
            )
            prompt = self.types.ModelInput.from_ints(list(b"a long sample "))
            for _ in range(5):
                if time.monotonic() >= deadline:
                    break
                with stats.lock:
                    stats.large_running += 1
                try:
                    sampler.sample(prompt, self.args.large_samples, params).result()
                    stats.ok("large_sample")
                except Exception as exc:
                    stats.fail("large_sample", exc)
                finally:
                    with stats.lock:
                        stats.large_running -= 1
        except Exception as exc:
            stats.fail("create_sampling_client", exc)
        finally:
            self.close(service, stats)

    def train(self, deadline: float, stats: Stats) -> None:
        service = self.service()
        stats.sessions[self.sdk] += 1
        try:
            try:
                tc = H.resolve(
                    service.create_lora_training_client(
                        base_model=self.args.model, rank=self.args.rank, seed=0
                    )
                )
                base = H.resolve(service.create_sampling_client(base_model=self.args.model))
                stats.ok("create_model")
            except Exception as exc:
                stats.fail("create_model", exc)
                return
            adam = self.types.AdamParams(learning_rate=1e-3)
            futures = []
            for batch in self.batches:  # pipelined: every step submitted before any is awaited
                futures.append((tc.forward_backward(batch, "cross_entropy"), tc.optim_step(adam)))
            for step, (fb, opt) in enumerate(futures):
                try:
                    loss = float(fb.result().metrics["loss:sum"])
                    opt.result()
                except Exception as exc:
                    stats.fail("train_step", exc)
                    return
                stats.ok("train_step")
                with stats.lock:
                    stats.losses.setdefault(step, []).append(loss)
                self.small_sample(service, base, stats)
            try:
                sampler = H.resolve(tc.save_weights_and_get_sampling_client())
                params = self.types.SamplingParams(max_tokens=8, temperature=0.0)
                prompt = self.types.ModelInput.from_ints(list(b"snap "))
                sampler.sample(prompt, 2, params).result()
                stats.ok("snapshot_sample")
                if self.i % 2 == 0:
                    tc.save_state(f"soak-{self.i}").result()  # overwrites: a bounded disk use
                    stats.ok("save_state")
            except Exception as exc:
                stats.fail("snapshot_sample", exc)
        finally:
            self.close(service, stats)


def slope_mb_per_min(samples: list[tuple[float, float]], after_s: float) -> float | None:
    """Least-squares slope of ``(t_s, rss_mb)`` samples with ``t_s >= after_s``, MB/min."""
    pts = [(t, m) for t, m in samples if t >= after_s]
    if len(pts) < 3:
        return None
    t = np.array([p[0] for p in pts])
    m = np.array([p[1] for p in pts])
    return float(np.polyfit(t, m, 1)[0] * 60.0)


def order_check(losses: dict[int, list[float]]) -> tuple[int, int, float]:
    """``(models checked at step 0, steps whose losses disagree, worst relative spread)``."""
    bad, worst = 0, 0.0
    for values in losses.values():
        ref = statistics.median(values)
        spread = max(abs(v - ref) for v in values) / max(abs(ref), 1e-9)
        worst = max(worst, spread)
        bad += int(spread > 1e-3)
    return len(losses.get(0, [])), bad, worst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=300.0)
    ap.add_argument("--warmup", type=float, default=None, help="default: a fifth of --seconds")
    ap.add_argument("--model", default="tinkjax/bytelm-micro")
    ap.add_argument("--rank", type=int, default=64)
    ap.add_argument("--steps", type=int, default=3, help="train steps per session")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--length", type=int, default=32)
    ap.add_argument("--large-samples", type=int, default=4)
    ap.add_argument("--large-tokens", type=int, default=64)
    ap.add_argument("--no-write", action="store_true", help="do not touch RESULTS.md")
    args = ap.parse_args()
    warmup = args.warmup if args.warmup is not None else args.seconds / 5
    command = "python bench/soak_bench.py " + shlex.join(sys.argv[1:])

    data_dir = tempfile.mkdtemp(prefix="tinkjax-soak-")
    server = H.launch("soak", [*H.serve_cmd(), "--data-dir", data_dir], timed=False)
    sdks = ["tinkjax", "tinker"] if tinker is not None else ["tinkjax"]
    workers = [
        Worker(i, sdks[i % len(sdks)], "large" if i % 4 == 3 else "train", args, server.url)
        for i in range(args.clients)
    ]
    stats = Stats()
    rss: list[tuple[float, float]] = []
    t0 = time.monotonic()
    deadline = t0 + args.seconds
    threads = [threading.Thread(target=w.run, args=(deadline, stats), daemon=True) for w in workers]
    for th in threads:
        th.start()
    while any(th.is_alive() for th in threads):
        rss.append((time.monotonic() - t0, rss_mb(server.pid)))
        time.sleep(2.0)
        if time.monotonic() > deadline + 300:
            stats.failures.append("workers still running 300 s after the deadline")
            break
    wall = time.monotonic() - t0
    rss.append((wall, rss_mb(server.pid)))
    server.stop()

    models, bad_steps, worst = order_check(stats.losses)
    small_ms = [1e3 * s for s in stats.small_s]
    after = [m for t, m in rss if t >= warmup]
    result: dict[str, Any] = {
        "command": command,
        **H.machine(),
        "clients": args.clients,
        "sdks": {s: sum(w.sdk == s for w in workers) for s in sdks},
        "seconds": args.seconds,
        "wall_s": wall,
        "calls": dict(stats.calls),
        "total_calls": sum(stats.calls.values()),
        "failed_calls": len(stats.failures),
        "failures": stats.failures[:20],
        "sessions": dict(stats.sessions),
        "models_trained": models,
        "order_bad_steps": bad_steps,
        "order_worst_rel_spread": worst,
        "rss_start_mb": rss[0][1],
        "rss_after_warmup_mb": after[0] if after else None,
        "rss_end_mb": rss[-1][1],
        "rss_max_mb": max(m for _, m in rss),
        "rss_slope_mb_per_min": slope_mb_per_min(rss, warmup),
        "warmup_s": warmup,
        "small_sample_p50_ms": H.p(small_ms, 0.5) if small_ms else None,
        "small_sample_p99_ms": H.p(small_ms, 0.99) if small_ms else None,
        "small_samples_during_large": len(small_ms),
        "rss_samples": rss,
    }
    out = H.ROOT / "results" / "soak_bench.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "rss_samples"}, indent=2))
    if not args.no_write:
        H.write_section("Soak", section(result))


def _f(v: float | None, fmt: str = ".1f") -> str:
    return "–" if v is None else format(v, fmt)


def section(r: dict[str, Any]) -> str:
    calls = ", ".join(f"{k} {v}" for k, v in sorted(r["calls"].items()))
    sdks = ", ".join(f"{v} {k}" for k, v in r["sdks"].items())
    return f"""## Soak

Command: `{r["command"]}` ({r["machine"]}, load average {r["load_avg_1_5_15"]} at the end,
Python {r["python"]}, jax {r["jax"]}). {r["clients"]} clients ({sdks}); one in four keeps large
sample requests running, the others open a session, train (pipelined steps, same seed and
data for every model), sample a snapshot, save a state now and then and close the session,
again and again. Server: `tinkjax serve` subprocess. RSS: `VmRSS` sampled every 2 s; slope:
least squares after {r["warmup_s"]:.0f} s of warm-up. Raw numbers:
`bench/results/soak_bench.json`.

| measure | value |
|---|---|
| duration (s) | {r["wall_s"]:.0f} |
| calls | {r["total_calls"]} ({calls}) |
| failed calls | **{r["failed_calls"]}** |
| sessions opened and closed | {sum(r["sessions"].values())} |
| per-model order (steps whose loss differs between models / models) | {r["order_bad_steps"]} / {r["models_trained"]} (worst spread {r["order_worst_rel_spread"]:.1e}) |
| server RSS start / after warm-up / end / max (MB) | {_f(r["rss_start_mb"], ".0f")} / {_f(r["rss_after_warmup_mb"], ".0f")} / {_f(r["rss_end_mb"], ".0f")} / {_f(r["rss_max_mb"], ".0f")} |
| RSS slope after warm-up (MB/min) | {_f(r["rss_slope_mb_per_min"])} |
| small sample (1 × 8 tokens) while large ones run: p50 / p99 (ms) | {_f(r["small_sample_p50_ms"], ".0f")} / {_f(r["small_sample_p99_ms"], ".0f")} (n = {r["small_samples_during_large"]}) |
"""


if __name__ == "__main__":
    os.environ.setdefault("TINKER_TELEMETRY", "0")
    main()
