"""Sweep benchmark: N runs at once against ``tinkjax serve`` vs the same work one run after another.

For each N (default 1, 4, 16, 64) and each workload — *plain* (``forward_backward`` with
cross-entropy, then ``optim_step``) and *custom* (``forward_backward_custom`` with cross-entropy
plus an entropy bonus and a probability L2, every term's gradient norm, then ``optim_step``) —
on ``tinkjax/bytelm-1m``, LoRA rank 8, 8 × 64 tokens per step:

- creating the N runs (one after another): time per run, and the server's RSS growth per run
  beyond the adapter's own bytes (weights and Adam moments, float32);
- *at once*: every run does ``--steps`` steps, the runs driven concurrently (``asyncio.gather``,
  each run's steps in order); aggregate steps/s and client CPU per run-step;
- *one after another*: the same steps, one run at a time; aggregate steps/s;
- the ratio at once / one after another (same server, same runs, same process);
- the ceiling: the model runtime alone, in a subprocess, doing ``forward_backward`` +
  ``optim_step`` back to back with no HTTP;
- the official SDK (plain steps, one thread per run) for comparison.

Writes ``bench/results/sweep_bench.json`` and the ``Sweeps`` section of ``bench/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import _harness as H
import numpy as np

MODEL = "tinkjax/bytelm-1m"
RANK = 8
KEY = "tml-bench-sweep"


def _adapter_bytes() -> int:
    """Bytes of one rank-8 adapter's weights plus its two Adam moments (float32)."""
    from tinkjax.models import PRESETS
    from tinkjax.models._adapters import TARGETS, target_shape

    c = PRESETS[MODEL]
    n = 0
    for name in TARGETS:
        layers, d_in, d_out = target_shape(c, name)
        n += layers * RANK * (d_in + d_out)
    return 3 * 4 * n


def _custom_spec() -> Any:
    import tinkjax.regularizers as R
    from tinkjax.engine import CustomLossSpec

    return CustomLossSpec(
        "cross_entropy",
        regularizers=[R.entropy(weight=0.01), R.l2(weight=0.1, target="probs")],
        track_grad_norms=True,
    )


async def _step(tc: Any, data: list[Any], workload: str, spec: Any) -> None:
    from tinkjax.types import AdamParams

    if workload == "plain":
        fb = await tc.forward_backward_async(data, "cross_entropy")
    else:
        fb = await tc.forward_backward_custom_async(data, spec)
    opt = await tc.optim_step_async(AdamParams(learning_rate=1e-4))
    await fb
    await opt


async def _steps(tc: Any, data: list[Any], workload: str, spec: Any, n: int) -> None:
    for _ in range(n):
        await _step(tc, data, workload, spec)


def _server_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wait_idle(server: H.Server, limit_s: float = 600.0) -> float:
    """Waits until the server uses under 5% of a core for a second (its background warm-up
    has compiled what the new runs need); returns the seconds waited."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < limit_s:
        c0 = _server_cpu_s(server.pid)
        time.sleep(1.0)
        if _server_cpu_s(server.pid) - c0 < 0.05:
            break
    return time.perf_counter() - t0


def _measure_tinkjax(url: str, server: H.Server, n_runs: int, steps: int) -> dict[str, Any]:
    import tinkjax.types as T
    from tinkjax.client import ServiceClient

    sc = ServiceClient(base_url=url, api_key=KEY)
    data = H.training_batch(T)
    spec = _custom_spec()
    out: dict[str, Any] = {"n": n_runs}
    rss0 = server.rss_mb()
    create: list[float] = []
    clients = []
    for i in range(n_runs):
        t0 = time.perf_counter()
        clients.append(sc.create_lora_training_client(MODEL, rank=RANK, seed=1000 + i).result())
        create.append(time.perf_counter() - t0)
    rss1 = server.rss_mb()
    out["create_ms_median"] = 1e3 * statistics.median(create)
    out["create_mb_per_run"] = (rss1 - rss0) / n_runs
    out["create_mb_beyond_adapter"] = (rss1 - rss0) / n_runs - _adapter_bytes() / 2**20
    out["warmup_wait_s"] = _wait_idle(server)

    async def gather(workload: str, k: int) -> None:
        await asyncio.gather(*(_steps(tc, data, workload, spec, k) for tc in clients))

    for workload in ("plain", "custom"):
        asyncio.run(gather(workload, 2))  # warm-up: compiles every fused size this N uses
        c0, t0 = time.process_time(), time.perf_counter()
        asyncio.run(gather(workload, steps))
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        at_once = n_runs * steps / wall

        async def one_by_one(workload: str = workload) -> None:
            for tc in clients:
                await _steps(tc, data, workload, spec, steps)

        t0 = time.perf_counter()
        asyncio.run(one_by_one())
        sequential = n_runs * steps / (time.perf_counter() - t0)
        out[workload] = {
            "at_once_steps_s": at_once,
            "one_by_one_steps_s": sequential,
            "ratio": at_once / sequential,
            "client_cpu_ms_per_run_step": 1e3 * cpu / (n_runs * steps),
        }
        print(f"  N={n_runs} {workload}: {out[workload]}", flush=True)
    sc.close()
    return out


def _measure_official(url: str, n_runs: int, steps: int) -> dict[str, Any]:
    import tinker
    from tinker import types as TT

    os.environ["TINKER_TELEMETRY"] = "0"
    sc = tinker.ServiceClient(base_url=url, api_key=KEY)
    data = H.training_batch(TT)
    clients = [
        sc.create_lora_training_client(MODEL, rank=RANK, seed=2000 + i) for i in range(n_runs)
    ]

    def run(tc: Any, k: int) -> None:
        for _ in range(k):
            fb = tc.forward_backward(data, "cross_entropy")
            opt = tc.optim_step(TT.AdamParams(learning_rate=1e-4))
            fb.result()
            opt.result()

    def threaded(k: int) -> float:
        threads = [threading.Thread(target=run, args=(tc, k)) for tc in clients]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return time.perf_counter() - t0

    threaded(2)
    c0 = time.process_time()
    wall = threaded(steps)
    cpu = time.process_time() - c0
    return {
        "n": n_runs,
        "at_once_steps_s": n_runs * steps / wall,
        "client_cpu_ms_per_run_step": 1e3 * cpu / (n_runs * steps),
    }


_CEILING = """
import time, numpy as np
from tinkjax.models import AdamHyper, DatumArrays, FwdBwdItem, ModelRuntime
rt = ModelRuntime("{model}")
rt.create_adapter("c", rank={rank}, seed=0)
rng = np.random.default_rng(0)
ds = []
for _ in range(8):
    t = rng.integers(0, 256, size=65)
    ds.append(DatumArrays(t[:-1], {{"target_tokens": t[1:].astype(np.int64),
                                   "weights": np.ones(64, np.float32)}}))
items = [FwdBwdItem(adapter_id="c", datums=ds, loss_fn="cross_entropy")]
h = AdamHyper(learning_rate=1e-4)
for _ in range(3):
    rt.forward_backward(items, forward_only=False); rt.optim_step("c", h)
t0 = time.perf_counter()
for _ in range({n}):
    rt.forward_backward(items, forward_only=False); rt.optim_step("c", h)
print({n} / (time.perf_counter() - t0))
"""


def _ceiling(n: int) -> float:
    code = _CEILING.format(model=MODEL, rank=RANK, n=n)
    # cwd: not the repository root, whose tinkjax/ folder lacks kernels/ (the install maps it)
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=H.ROOT
    )
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ns", default="1,4,16,64", help="run counts, comma-separated")
    parser.add_argument("--steps", type=int, default=4, help="measured steps per run")
    parser.add_argument("--no-official", action="store_true", help="skip the official SDK")
    parser.add_argument("--out", default=str(H.ROOT / "results" / "sweep_bench.json"))
    args = parser.parse_args()
    ns = [int(x) for x in args.ns.split(",")]
    env = H.machine()
    print(env, flush=True)
    ceiling = _ceiling(40)
    print(f"ceiling: {ceiling:.1f} steps/s", flush=True)
    # The server compiles its training programs for 64-token rows ahead (background warm-up).
    os.environ["TINKJAX_WARMUP"] = "cross_entropy:64"
    server = H.launch("tinkjax", H.serve_cmd(), timed=False)
    rows, official = [], []
    try:
        for n in ns:
            rows.append(_measure_tinkjax(server.url, server, n, args.steps))
            if not args.no_official:
                official.append(_measure_official(server.url, n, args.steps))
                print(f"  official N={n}: {official[-1]}", flush=True)
    finally:
        server.stop()
    env["load_avg_after"] = [round(x, 2) for x in os.getloadavg()]
    result = {"env": env, "ceiling_steps_s": ceiling, "tinkjax": rows, "official": official}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))

    off = {o["n"]: o for o in official}
    lines = [
        "## Sweeps",
        "",
        f"Command: `python bench/sweep_bench.py --ns {args.ns} --steps {args.steps}` "
        f"({env['machine']}, jax {env['jax']}; load average {env['load_avg_1_5_15'][0]} before, "
        f"{env['load_avg_after'][0]} after). `tinkjax serve` subprocess, {MODEL}, LoRA rank "
        f"{RANK}, 8 × 64 tokens per step; a step is forward_backward (plain: cross-entropy; "
        "custom: `forward_backward_custom` with cross-entropy + entropy + probability L2 and every "
        "term's grad norm) then optim_step. *At once*: all N runs driven concurrently, each in "
        "order; *one by one*: the same steps one run at a time. Aggregate steps/s; client CPU per "
        "run-step in the at-once phase. Server started with `TINKJAX_WARMUP=cross_entropy:64` "
        "(its training programs compiled ahead on a background thread). Ceiling: the model "
        "runtime alone in-process, plain steps "
        f"back to back, no HTTP: **{ceiling:.1f} steps/s**. Raw numbers: "
        "`bench/results/sweep_bench.json`.",
        "",
        "| N | plain at once | plain one by one | ratio | custom at once | custom one by one | "
        "ratio | client CPU ms/run-step (plain, custom) | official SDK at once (threads) | "
        "official client CPU ms | create run ms | MB/run beyond adapter |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        o = off.get(r["n"])
        lines.append(
            f"| {r['n']} | {r['plain']['at_once_steps_s']:.1f} | "
            f"{r['plain']['one_by_one_steps_s']:.1f} | {r['plain']['ratio']:.2f} | "
            f"{r['custom']['at_once_steps_s']:.1f} | {r['custom']['one_by_one_steps_s']:.1f} | "
            f"{r['custom']['ratio']:.2f} | {r['plain']['client_cpu_ms_per_run_step']:.2f}, "
            f"{r['custom']['client_cpu_ms_per_run_step']:.2f} | "
            + (
                f"{o['at_once_steps_s']:.1f} | {o['client_cpu_ms_per_run_step']:.2f}"
                if o
                else "– | –"
            )
            + f" | {r['create_ms_median']:.1f} | {r['create_mb_beyond_adapter']:.2f} |"
        )
    lines.append("")
    H.write_section("Sweeps", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    np.set_printoptions(precision=3)
    main()
