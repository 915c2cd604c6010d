"""Shared pieces of the server and client benchmarks: server subprocesses, the training batch,
server-side timings and the critical-path breakdown, and writing a ``RESULTS.md`` section.

Times are ``time.monotonic()`` (``CLOCK_MONOTONIC``), one clock for every process of the
machine, so client windows and the timestamps of ``bench/timed_server.py`` line up.
"""

from __future__ import annotations

import itertools
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent
REPO = ROOT.parent

#: The step's own endpoints; heartbeats and telemetry are not part of a step.
STEP_PATHS = frozenset(
    {"/api/v1/forward_backward", "/api/v1/optim_step", "/api/v1/retrieve_future",
     "/api/v1/asample"}
)  # fmt: skip


def serve_cmd() -> list[str]:
    """``tinkjax serve --port 0`` (the venv's console script when there is one)."""
    script = Path(sys.executable).parent / "tinkjax"
    head = [str(script)] if script.exists() else [sys.executable, "-m", "tinkjax.cli"]
    return [*head, "serve", "--port", "0"]


def timed_cmd(*, profile: str | None = None) -> list[str]:
    """``bench/timed_server.py`` (the same server plus timestamps)."""
    cmd = [sys.executable, str(ROOT / "timed_server.py")]
    if profile:
        cmd += ["--profile", profile]
    return cmd


@dataclass
class Server:
    """A server subprocess and when it got going."""

    name: str
    proc: subprocess.Popen[str]
    url: str
    launched: float
    url_printed: float
    timed: bool
    first_answer: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss_mb(self) -> float:
        return rss_mb(self.pid)

    def timings(self) -> dict[str, list[dict[str, Any]]]:
        """Records since the last call (timed servers only)."""
        return dict(httpx.get(self.url + "/_bench/timings", timeout=30).json())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def launch(name: str, cmd: list[str], *, timed: bool) -> Server:
    """Start ``cmd``, wait for its URL line, then for the first answered ``healthz``."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    launched = time.monotonic()
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=REPO
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    printed = time.monotonic()
    match = re.search(r"(http://\S+)", line)
    if match is None:
        proc.kill()
        raise RuntimeError(f"{name}: no URL in {line!r}")
    server = Server(name, proc, match.group(1), launched, printed, timed)
    with httpx.Client(timeout=30) as client:
        while True:
            try:
                if client.get(server.url + "/api/v1/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.002)
    server.first_answer = time.monotonic()
    return server


def rss_mb(pid: int) -> float:
    """Resident set size of ``pid`` (``VmRSS`` of ``/proc/<pid>/status``), MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def training_batch(types: Any, *, n: int = 8, length: int = 64, seed: int = 0) -> list[Any]:
    """``n`` datums of ``length`` tokens (next-byte prediction of random bytes) built with the
    ``Datum``/``ModelInput``/``TensorData`` classes of ``types`` (tinkjax.types or tinker)."""
    rng = np.random.default_rng(seed)
    data = []
    for _ in range(n):
        toks = rng.integers(0, 256, length + 1)
        data.append(
            types.Datum(
                model_input=types.ModelInput.from_ints(toks[:-1].tolist()),
                loss_fn_inputs={
                    "target_tokens": types.TensorData.from_numpy(toks[1:].astype(np.int64)),
                    "weights": types.TensorData.from_numpy(np.ones(length, np.float32)),
                },
            )
        )
    return data


def resolve(obj: Any) -> Any:
    """The client behind a create_* answer (both SDKs answer a future for it)."""
    return obj.result() if hasattr(obj, "result") and callable(obj.result) else obj


# ------------------------------------------------------------------------ breakdown

CATEGORIES = ("jax", "worker_other", "server_http", "client_wire")


def breakdown(start: float, end: float, rec: dict[str, list[dict[str, Any]]]) -> dict[str, float]:
    """Split ``[start, end]`` into what was going on, by priority, in ms.

    ``jax``: a runtime call (``forward_backward``/``optim_step``/``sample``) was running;
    ``worker_other``: the worker ran a job outside the runtime call (output conversion,
    bookkeeping); ``server_http``: only an HTTP handler of a step endpoint was active (body
    read, decode, submit, long-poll wake-up, encode); ``client_wire``: nothing server-side
    was active — the client, the kernel and the socket (plus uvicorn's own parsing, which
    happens before the app is called).
    """
    layers: dict[str, list[tuple[float, float]]] = {
        "jax": [(r["start"], r["end"]) for r in rec["runtime"]],
        "worker_other": [(r["start"], r["end"]) for r in rec["jobs"]],
        "server_http": [
            (r["called"], r["done"]) for r in rec["http"]
            if r["path"] in STEP_PATHS and "done" in r
        ],
    }  # fmt: skip
    cuts = {start, end}
    for spans in layers.values():
        for a, b in spans:
            for t in (a, b):
                if start < t < end:
                    cuts.add(t)
    points = sorted(cuts)
    out = dict.fromkeys(CATEGORIES, 0.0)
    for a, b in itertools.pairwise(points):
        mid = (a + b) / 2
        for name, spans in layers.items():
            if any(s <= mid <= e for s, e in spans):
                out[name] += b - a
                break
        else:
            out["client_wire"] += b - a
    return {k: 1e3 * v for k, v in out.items()}


def in_window(rec: dict[str, list[dict[str, Any]]], start: float, end: float) -> dict[str, Any]:
    """Records overlapping ``[start, end]``."""
    return {
        "http": [
            r for r in rec["http"] if r.get("done", r["called"]) >= start and r["called"] <= end
        ],
        "jobs": [r for r in rec["jobs"] if r["end"] >= start and r["start"] <= end],
        "runtime": [r for r in rec["runtime"] if r["end"] >= start and r["start"] <= end],
    }


def median_breakdown(rows: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in rows) for k in CATEGORIES} if rows else {}


# ------------------------------------------------------------------------ stats & output


def p(values: list[float], q: float) -> float:
    """The ``q`` quantile (nearest rank)."""
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def summary(values_s: list[float]) -> dict[str, float]:
    """Median, p90, min and count of a list of seconds, in ms."""
    ms = [1e3 * v for v in values_s]
    return {"median_ms": statistics.median(ms), "p90_ms": p(ms, 0.9), "min_ms": min(ms),
            "n": len(ms)}  # fmt: skip


def machine() -> dict[str, Any]:
    import jax

    load = os.getloadavg()
    return {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {jax.default_backend()}",
        "python": platform.python_version(),
        "jax": jax.__version__,
        "load_avg_1_5_15": [round(x, 2) for x in load],
    }


def write_section(title: str, section: str) -> None:
    """Replace (or append) the ``## {title}`` section of ``bench/RESULTS.md``."""
    path = ROOT / "RESULTS.md"
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    head = f"## {title}\n"
    start = text.find(head)
    section = section.rstrip("\n") + "\n"
    if start >= 0:
        end = text.find("\n## ", start + 1)
        text = text[:start] + section + ("\n" + text[end + 1 :] if end >= 0 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)
