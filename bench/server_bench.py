"""Benchmark of the local backend (``tinkjax serve``) on CPU, driven by the tinkjax client.

The server runs as a subprocess (client and server are separate processes); the default model
``tinkjax/bytelm-1m``, one LoRA adapter (rank 8), a batch of 8 × 64 tokens. Measured:

* synchronous train step: ``forward_backward`` (cross_entropy) then ``optim_step``, each
  awaited; warm steps only (the first 5, which compile, are reported apart);
* pipelined steps: ``depth`` steps (forward_backward + optim_step each) submitted before any
  is awaited; time per step = round time / depth;
* sampling: one request of 4 samples × 16 new tokens (16-byte prompt, no stop), awaited;
* start-up: from launching ``tinkjax serve --port 0`` to the first answered ``healthz`` and
  ``get_server_capabilities``, each launch a fresh process;
* resident memory (``VmRSS``) of the server after start, after the compile steps, every 10
  steps and after 100 steps.

Two servers run side by side and the sync, pipelined and sampling measurements are
interleaved in blocks (so load changes hit both alike): ``serve`` (``tinkjax serve``, the
product) and ``timed`` (``bench/timed_server.py``: the same server plus timestamps, giving the
critical-path breakdown). Finally the runtime alone (``ModelRuntime`` in this process, no
HTTP: forward-only, forward/backward, optim step, sample), measured in blocks between the
servers' blocks, gives the floor.

Run ``python bench/server_bench.py`` (about 3 minutes) or ``--quick``; writes
``bench/results/server_bench.json`` and the "## Server" section of ``bench/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from typing import Any

import _harness as H
import httpx
import numpy as np

import tinkjax.types as T
from tinkjax.client import ServiceClient

MODEL = "tinkjax/bytelm-1m"
PROMPT = list(b"The quick brown ")  # 16 tokens
GOALS = {"sync_ms": 30.0, "sample_ms": 50.0, "start_s": 2.0, "rss_mb": 600.0}
ADAM = T.AdamParams(learning_rate=1e-4)
COMPILE_STEPS = 5


def startup(n: int) -> dict[str, Any]:
    """``n`` fresh launches of ``tinkjax serve``: seconds to the URL line, to the first
    ``healthz`` answer and to the first ``get_server_capabilities`` answer; RSS then."""
    rows = []
    for _ in range(n):
        server = H.launch("startup", H.serve_cmd(), timed=False)
        caps = httpx.get(
            server.url + "/api/v1/get_server_capabilities",
            headers={"X-API-Key": "tml-bench"},
            timeout=30,
        )
        t_caps = time.monotonic()
        assert caps.status_code == 200, caps.text
        assert MODEL in caps.text, caps.text
        rows.append({
            "url_s": server.url_printed - server.launched,
            "healthz_s": server.first_answer - server.launched,
            "capabilities_s": t_caps - server.launched,
            "rss_mb": server.rss_mb(),
        })  # fmt: skip
        server.stop()
    return {k: statistics.median(r[k] for r in rows) for k in rows[0]} | {
        "max_capabilities_s": max(r["capabilities_s"] for r in rows),
        "runs": rows,
    }


class Variant:
    """One server with its clients and what was measured on it."""

    def __init__(self, name: str, server: H.Server) -> None:
        self.name = name
        self.server = server
        self.rss: dict[str, float] = {"after_start": server.rss_mb()}
        self.service = ServiceClient(base_url=server.url, api_key="tml-bench")
        self.tc = H.resolve(self.service.create_lora_training_client(base_model=MODEL, rank=8))
        self.sampler = H.resolve(self.service.create_sampling_client(base_model=MODEL))
        self.data = H.training_batch(T)
        self.sync: list[float] = []
        self.compile_steps: list[float] = []
        self.pipelined: list[float] = []
        self.sample: list[float] = []
        self.breakdowns: dict[str, list[dict[str, float]]] = {"sync": [], "pipelined": [],
                                                               "sample": []}  # fmt: skip
        self.rss_curve: list[tuple[int, float]] = []
        self.losses: list[float] = []

    def step(self) -> tuple[float, float]:
        t0 = time.monotonic()
        out = self.tc.forward_backward(self.data, "cross_entropy").result()
        self.tc.optim_step(ADAM).result()
        t1 = time.monotonic()
        self.losses.append(float(out.metrics["loss:sum"]))
        return t0, t1

    def _clear(self) -> None:
        if self.server.timed:
            self.server.timings()

    def _explain(self, kind: str, windows: list[tuple[float, float]], per: int = 1) -> None:
        if not self.server.timed:
            return
        rec = self.server.timings()
        for a, b in windows:
            row = H.breakdown(a, b, H.in_window(rec, a, b))
            self.breakdowns[kind].append({k: v / per for k, v in row.items()})

    def warm_up(self) -> None:
        for _ in range(COMPILE_STEPS):
            t0, t1 = self.step()
            self.compile_steps.append(t1 - t0)
        t0 = time.monotonic()
        self.sample_once()
        self.compile_steps.append(time.monotonic() - t0)
        self.rss["after_compile"] = self.server.rss_mb()

    def sync_block(self, n: int) -> None:
        self._clear()
        windows = [self.step() for _ in range(n)]
        self.sync += [b - a for a, b in windows]
        self._explain("sync", windows)
        self.rss_curve.append((len(self.sync), self.server.rss_mb()))

    def pipelined_round(self, depth: int) -> None:
        self._clear()
        t0 = time.monotonic()
        futures = []
        for _ in range(depth):
            futures.append(self.tc.forward_backward(self.data, "cross_entropy"))
            futures.append(self.tc.optim_step(ADAM))
        for f in futures:
            f.result()
        t1 = time.monotonic()
        self.pipelined.append((t1 - t0) / depth)
        self._explain("pipelined", [(t0, t1)], per=depth)

    def sample_once(self) -> tuple[float, float]:
        t0 = time.monotonic()
        out = self.sampler.sample(
            prompt=T.ModelInput.from_ints(PROMPT), num_samples=4,
            sampling_params=T.SamplingParams(max_tokens=16, temperature=1.0, stop=[]),
        ).result()  # fmt: skip
        t1 = time.monotonic()
        assert len(out.sequences) == 4
        assert all(len(s.tokens) == 16 for s in out.sequences)
        return t0, t1

    def sample_block(self, n: int) -> None:
        self._clear()
        windows = [self.sample_once() for _ in range(n)]
        self.sample += [b - a for a, b in windows]
        self._explain("sample", windows)

    def result(self) -> dict[str, Any]:
        return {
            "server": self.server.name,
            "compile_steps_s": self.compile_steps,
            "sync": H.summary(self.sync),
            "pipelined": H.summary(self.pipelined),
            "sample": H.summary(self.sample),
            "breakdown_ms": {k: H.median_breakdown(v) for k, v in self.breakdowns.items()},
            "rss_mb": self.rss,
            "rss_curve": self.rss_curve,
            "loss_first_last": [self.losses[0], self.losses[-1]],
        }


class RuntimeFloor:
    """``ModelRuntime`` in this process, no HTTP: forward-only, fwd/bwd + optim, one 4 × 16
    sample; measured in blocks interleaved with the servers' blocks (same load)."""

    def __init__(self) -> None:
        from tinkjax.models import AdamHyper, DatumArrays, FwdBwdItem, ModelRuntime, SampleJob

        self.rt = ModelRuntime(MODEL)
        self.rt.create_adapter("a", rank=8, seed=0)
        datums = [
            DatumArrays(
                input_tokens=np.asarray(d.model_input.to_numpy()),
                loss_fn_inputs={k: v.to_numpy() for k, v in d.loss_fn_inputs.items()},
            )
            for d in H.training_batch(T)
        ]
        self.item = FwdBwdItem(
            adapter_id="a", datums=datums, loss_fn="cross_entropy", loss_fn_config={}
        )
        self.hyper = AdamHyper(learning_rate=1e-4)
        self.job = SampleJob(
            snapshot=None, prompt=np.asarray(PROMPT, np.int32), num_samples=4, max_tokens=16,
            temperature=1.0, top_k=-1, top_p=1.0, seed=None, stop_token_seqs=[],
            include_prompt_logprobs=False,
        )  # fmt: skip
        self.times: dict[str, list[float]] = {"fwd": [], "fb": [], "opt": [], "smp": []}
        self.block(3)
        self.times = {k: [] for k in self.times}

    def block(self, n: int) -> None:
        rt = self.rt
        for _ in range(n):
            tf = time.perf_counter()
            rt.forward_backward([self.item], forward_only=True)
            t0 = time.perf_counter()
            rt.forward_backward([self.item], forward_only=False)
            t1 = time.perf_counter()
            rt.optim_step("a", self.hyper)
            t2 = time.perf_counter()
            rt.sample(self.job)
            t3 = time.perf_counter()
            for key, value in (("fwd", t0 - tf), ("fb", t1 - t0), ("opt", t2 - t1),
                               ("smp", t3 - t2)):  # fmt: skip
                self.times[key].append(value)

    def result(self) -> dict[str, Any]:
        t = self.times
        return {"forward_only": H.summary(t["fwd"]), "forward_backward": H.summary(t["fb"]),
                "optim_step": H.summary(t["opt"]),
                "step": H.summary([a + b for a, b in zip(t["fb"], t["opt"], strict=True)]),
                "sample": H.summary(t["smp"])}  # fmt: skip


def write_markdown(res: dict[str, Any], command: str) -> None:
    v = res["variants"]
    serve = v["serve"]
    st = res["startup"]
    load = res["load_before"], res["load_after"]
    lines = [
        "## Server",
        "",
        f"Command: `{command}` ({res['machine']['machine']}, Python {res['machine']['python']}, "
        f"jax {res['machine']['jax']}; load average {load[0][0]} before and "
        f"{load[1][0]} after the run). Model `{MODEL}`, LoRA "
        "rank 8, batch 8 × 64 tokens, cross_entropy; `tinkjax serve` in a subprocess driven "
        "by the tinkjax client over loopback. Warm steps only (the first "
        f"{COMPILE_STEPS}, which compile, are excluded); ms. `timed` = the same server plus "
        "timestamps (`bench/timed_server.py`); both measured interleaved in one run. Raw numbers: `bench/results/server_bench.json`.",
        "",
        "| server | sync step median | p90 | pipelined / step median | p90 | sample 4×16 median "
        "| p90 |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in v.items():
        s, pl, sm = r["sync"], r["pipelined"], r["sample"]
        lines.append(
            f"| {name} | {s['median_ms']:.1f} | {s['p90_ms']:.1f} | {pl['median_ms']:.1f} | "
            f"{pl['p90_ms']:.1f} | {sm['median_ms']:.1f} | {sm['p90_ms']:.1f} |"
        )
    fl = res["runtime_floor"]
    lines.append(
        f"| runtime only (in-process, no HTTP) | {fl['step']['median_ms']:.1f} | "
        f"{fl['step']['p90_ms']:.1f} | – | – | {fl['sample']['median_ms']:.1f} | "
        f"{fl['sample']['p90_ms']:.1f} |"
    )
    lines += [
        "",
        f"Runtime only: forward-only {fl['forward_only']['median_ms']:.1f} ms, "
        f"forward_backward {fl['forward_backward']['median_ms']:.1f} ms, "
        f"optim_step {fl['optim_step']['median_ms']:.1f} ms (medians).",
        "",
        "Where the time of one step goes (critical path, medians of per-step ms; each instant "
        "is counted once, in the first category that applies: `jax` = a runtime call runs; "
        "`worker` = the worker runs a job outside the runtime call; `http` = only a server "
        "handler of the step's endpoints is active; `client+wire` = nothing server-side is "
        "active: client code, kernel, socket, uvicorn parsing):",
        "",
        "| server | measurement | jax | worker | http | client+wire |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in v.items():
        for kind, b in r["breakdown_ms"].items():
            if b:
                lines.append(
                    f"| {name} | {kind} | {b['jax']:.1f} | {b['worker_other']:.1f} | "
                    f"{b['server_http']:.1f} | {b['client_wire']:.1f} |"
                )
    rs = serve["rss_mb"]
    curve = serve["rss_curve"]
    lines += [
        "",
        f"Start-up (`tinkjax serve --port 0`, {len(st['runs'])} fresh launches, medians): URL "
        f"printed {st['url_s']:.2f} s, first `healthz` answer {st['healthz_s']:.2f} s, first "
        f"`get_server_capabilities` answer {st['capabilities_s']:.2f} s (worst "
        f"{st['max_capabilities_s']:.2f} s). On a fresh server the first step (compile) took "
        f"{serve['compile_steps_s'][0]:.2f} s and the first sample "
        f"{serve['compile_steps_s'][-1]:.2f} s (compiling, or loading from JAX's persistent "
        "compilation cache where earlier runs filled it).",
        "",
        f"Resident memory of the `tinkjax serve` process: {rs['after_start']:.0f} MB after "
        f"start, {rs['after_compile']:.0f} MB after the compile steps and first sample, "
        f"{rs['after_sync_steps']:.0f} MB after {rs['steps']} steps, {rs['at_end']:.0f} MB at "
        f"the end (after the pipelined rounds and samples). Every 10 steps: "
        + ", ".join(f"{m:.0f}" for _, m in curve)
        + " MB.",
        "",
    ]
    lines += res["verdict_lines"]
    timed = v["timed"]["breakdown_ms"]["sync"]
    ratio = (fl["forward_backward"]["median_ms"] - fl["forward_only"]["median_ms"]) / fl[
        "forward_only"]["median_ms"]  # fmt: skip
    over = v["timed"]["sync"]["median_ms"] - timed["jax"]
    lines += [
        "",
        f"Where the synchronous step goes: the runtime calls take {timed['jax']:.1f} of its "
        f"{v['timed']['sync']['median_ms']:.1f} ms (HTTP handling {timed['server_http']:.1f} "
        f"ms, client and wire {timed['client_wire']:.1f} ms, worker bookkeeping "
        f"{timed['worker_other']:.1f} ms), and the runtime alone, with no server at all, takes "
        f"{fl['step']['median_ms']:.1f} ms. Its backward pass costs {ratio:.1f}× its forward "
        f"pass ({fl['forward_only']['median_ms']:.1f} ms forward-only); about 1–2× is usual "
        "for a model with frozen base weights. "
        + (
            f"The JAX time alone is over the {GOALS['sync_ms']:.0f} ms goal, so meeting it "
            "needs a faster JAX program; the "
            if timed["jax"] > GOALS["sync_ms"]
            else f"The JAX time fits in the {GOALS['sync_ms']:.0f} ms goal; the "
        )
        + f"{over:.1f} ms around it is HTTP, scheduling and client time. Pipelining hides "
        "that time, but not the JAX time.",
        "",
        "History: an earlier run the same hour, before `_bind` in `tinkjax/server/_launch.py` "
        "created its socket with `IPPROTO_TCP`, measured a 180 ms synchronous step and a "
        "88 ms sample. asyncio sets `TCP_NODELAY` only on sockets whose protocol is "
        "`IPPROTO_TCP`, so each response, sent as a headers write and then a body write, "
        "waited about 44 ms for the client's delayed ACK (Nagle).",
    ]
    H.write_section("Server", "\n".join(lines) + "\n")


def verdict(res: dict[str, Any]) -> list[str]:
    serve = res["variants"]["serve"]
    rs = serve["rss_mb"]
    growth = rs["after_sync_steps"] - rs["after_compile"]
    curve = serve["rss_curve"]
    half = curve[len(curve) // 2 - 1]
    settled = rs["after_sync_steps"] - half[1]
    flat = abs(settled) <= max(5.0, 0.01 * rs["after_compile"])
    checks = [
        ("synchronous step ≤ 30 ms", serve["sync"]["median_ms"] <= GOALS["sync_ms"],
         f"{serve['sync']['median_ms']:.1f} ms"),
        ("sample 4 × 16 ≤ 50 ms", serve["sample"]["median_ms"] <= GOALS["sample_ms"],
         f"{serve['sample']['median_ms']:.1f} ms"),
        ("start ≤ 2 s", res["startup"]["capabilities_s"] <= GOALS["start_s"],
         f"{res['startup']['capabilities_s']:.2f} s"),
        ("resident memory ≤ 600 MB", max(rs["at_end"], rs["after_sync_steps"]) <= GOALS["rss_mb"],
         f"{max(rs['at_end'], rs['after_sync_steps']):.0f} MB"),
        (f"… and flat over the {rs['steps']} steps", flat,
         f"{growth:+.1f} MB over the {rs['steps']} steps; {settled:+.1f} MB over the last "
         f"{rs['steps'] - half[0]}"),
    ]  # fmt: skip
    out = ["Goals (issue 3), on `tinkjax serve` as shipped:", "",
           "| goal | measured | met |", "|---|---|---|"]  # fmt: skip
    for name, ok, value in checks:
        out.append(f"| {name} | {value} | {'yes' if ok else '**no**'} |")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few steps and launches (smoke run)")
    parser.add_argument("--steps", type=int, default=100, help="synchronous steps per server")
    args = parser.parse_args()
    random.seed(0)
    steps = 20 if args.quick else args.steps
    block = 10
    depth = 8
    res: dict[str, Any] = {"machine": H.machine(), "quick": args.quick,
                           "load_before": H.machine()["load_avg_1_5_15"]}  # fmt: skip
    res["startup"] = startup(2 if args.quick else 5)
    print("startup", json.dumps({k: v for k, v in res["startup"].items() if k != "runs"}))
    specs = [
        ("serve", H.serve_cmd(), False),
        ("timed", H.timed_cmd(), True),
    ]
    variants = {name: Variant(name, H.launch(name, cmd, timed=t)) for name, cmd, t in specs}
    floor = RuntimeFloor()
    try:
        for var in variants.values():
            var.warm_up()
        order = list(variants.values())
        floor_every = 3
        for i in range(steps // block):
            random.shuffle(order)
            for var in order:
                var.sync_block(block)
            if i % floor_every == 0:
                floor.block(block // 2)
        serve = variants["serve"]
        serve.rss["after_sync_steps"] = serve.server.rss_mb()
        serve.rss["steps"] = len(serve.sync)
        for _ in range(3 if args.quick else 8):
            random.shuffle(order)
            for var in order:
                var.pipelined_round(depth)
        for _ in range(2 if args.quick else 5):
            random.shuffle(order)
            for var in order:
                var.sample_block(5 if args.quick else 10)
        serve.rss["at_end"] = serve.server.rss_mb()
        res["variants"] = {name: var.result() for name, var in variants.items()}
    finally:
        for var in variants.values():
            var.service.close()
            var.server.stop()
    res["runtime_floor"] = floor.result()
    res["load_after"] = H.machine()["load_avg_1_5_15"]
    res["pipeline_depth"] = depth
    res["verdict_lines"] = verdict(res)
    out = H.ROOT / "results" / "server_bench.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    write_markdown(res, "python bench/server_bench.py" + (" --quick" if args.quick else ""))
    for name, r in res["variants"].items():
        print(name, json.dumps({k: r[k] for k in ("sync", "pipelined", "sample", "breakdown_ms")}))
    print("floor", json.dumps(res["runtime_floor"]))
    print("\n".join(res["verdict_lines"]))


if __name__ == "__main__":
    main()
