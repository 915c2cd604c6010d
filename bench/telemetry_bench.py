"""What telemetry and metrics cost per request, next to what the request itself costs the client.

Part 1 (in process, no network): the two events every HTTP try emits (``request.start`` and
``request.stop``) with no handler, with the default metrics collector, with a telemetry
reporter forwarding them (its session's), and with both; median µs per request over rounds.

Part 2 (a ``tinkjax serve`` subprocess): the same sampling call (``bytelm-micro``, one token:
``asample`` plus its ``retrieve_future`` polls) with telemetry off (``TINKER_TELEMETRY=0``,
collector detached) and on (a ServiceClient's reporter plus the collector), SDK variants
alternating in blocks; client CPU (``time.process_time`` of this process) per request.

    python bench/telemetry_bench.py [--rounds 7]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from typing import Any

from _harness import ROOT, launch, machine, serve_cmd, write_section

from tinkjax import events, metrics
from tinkjax.client import ServiceClient, TelemetryReporter, Transport, resolve_config
from tinkjax.types import ModelInput, SamplingParams


class _Session:
    session_id_if_ready = "bench-session"

    async def get_session_id(self) -> str:
        return "bench-session"


def _emit_requests(n: int) -> float:
    meta = {
        "method": "POST",
        "path": "/api/v1/asample",
        "session_id": "bench-session",
        "model_id": None,
        "sampling_session_id": "s1",
        "telemetry_metadata": {},
    }
    t0 = time.perf_counter()
    for _ in range(n):
        start = {**meta, "retry_count": 0}
        events.emit(("tinkjax", "request", "start"), {"system_time": time.time()}, start)
        events.emit(("tinkjax", "request", "stop"), {"duration_s": 0.001}, {**start, "status": 200})
    return (time.perf_counter() - t0) / n


def micro(rounds: int, n: int) -> dict[str, float]:
    transport = Transport(resolve_config(base_url="http://127.0.0.1:9", api_key="tml-bench"))
    results: dict[str, list[float]] = {"none": [], "metrics": [], "reporter": [], "both": []}
    for _ in range(rounds):
        for variant in results:
            metrics.detach()
            rep = None
            if variant in ("metrics", "both"):
                metrics.attach()
            if variant in ("reporter", "both"):
                rep = TelemetryReporter(
                    transport,
                    _Session(),
                    flush_interval=3600.0,
                    flush_threshold=10**9,
                    max_queue_size=10**9,
                )
            results[variant].append(_emit_requests(n))
            if rep is not None:
                rep.stop(timeout=0.0)
    metrics.attach()
    return {k: statistics.median(v) * 1e6 for k, v in results.items()}


def real(rounds: int, calls: int) -> dict[str, Any]:
    server = launch("tinkjax", serve_cmd(), timed=False)
    counted = [0]
    events.attach(
        "bench.count", "tinkjax.request.stop", lambda *_: counted.__setitem__(0, counted[0] + 1)
    )
    cpu: dict[str, list[float]] = {"off": [], "on": []}
    try:
        for r in range(rounds):
            order = ["off", "on"] if r % 2 == 0 else ["on", "off"]
            for variant in order:
                os.environ["TINKER_TELEMETRY"] = "1" if variant == "on" else "0"
                if variant == "on":
                    metrics.attach()
                else:
                    metrics.detach()
                sc = ServiceClient(base_url=server.url, api_key="tml-bench", heartbeat_interval=0)
                sampler = sc.create_sampling_client(base_model="tinkjax/bytelm-micro").result()
                prompt = ModelInput.from_ints([72, 105])
                params = SamplingParams(max_tokens=1)
                sampler.sample(prompt, 1, params).result()  # warm
                counted[0] = 0
                c0 = time.process_time()
                for _ in range(calls):
                    sampler.sample(prompt, 1, params).result()
                used = time.process_time() - c0
                cpu[variant].append(used / max(counted[0], 1))
                sc.close()
    finally:
        events.detach("bench.count")
        metrics.attach()
        server.stop()
    off = statistics.median(cpu["off"]) * 1e6
    on = statistics.median(cpu["on"]) * 1e6
    return {"cpu_per_request_off_us": off, "cpu_per_request_on_us": on, "rounds": rounds,
            "calls_per_block": calls}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--calls", type=int, default=60)
    args = parser.parse_args()
    m = micro(args.rounds, args.events)
    r = real(args.rounds, args.calls)
    env = machine()
    out = {"micro_us_per_request": m, "real": r, "machine": env}
    (ROOT / "results" / "telemetry_bench.json").write_text(json.dumps(out, indent=2))
    added = {k: v - m["none"] for k, v in m.items()}
    section = f"""## Telemetry and metrics

Command: `python bench/telemetry_bench.py --rounds {args.rounds} --calls {args.calls}` ({env["machine"]}, Python
{env["python"]}; load average {env["load_avg_1_5_15"][0]} at the end). Part 1: the two events
of one HTTP try (`request.start`, `request.stop`) emitted in a loop, {args.events} per round,
median over rounds of µs per request. Part 2: sampling one token from `bytelm-micro` on a
`tinkjax serve` subprocess ({args.calls} calls per block, off/on blocks alternating, {args.rounds}
rounds), client CPU (`time.process_time` of the client process) per HTTP request. Raw numbers:
`bench/results/telemetry_bench.json`.

| per request | µs | added to no handler |
|---|---|---|
| events, no handler | {m["none"]:.1f} | – |
| + metrics collector | {m["metrics"]:.1f} | {added["metrics"]:.1f} |
| + telemetry reporter (forwarding `request.stop`) | {m["reporter"]:.1f} | {added["reporter"]:.1f} |
| + both | {m["both"]:.1f} | {added["both"]:.1f} |

| client CPU per request, real sampling calls | µs |
|---|---|
| telemetry off, collector detached | {r["cpu_per_request_off_us"]:.0f} |
| reporter + collector on | {r["cpu_per_request_on_us"]:.0f} |

Metrics and telemetry together add {added["both"]:.0f} µs per request, {100 * added["both"] / r["cpu_per_request_off_us"]:.1f}% of the
{r["cpu_per_request_off_us"]:.0f} µs of client CPU a request costs with both off (part 2's on/off difference is within
its run-to-run noise when it is smaller than part 1's figure).
"""
    write_section("Telemetry and metrics", section)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
