"""The local backend with timestamps, for the server and client benchmarks.

Runs ``tinkjax.server.start`` (the same code ``tinkjax serve`` runs) with two additions, made
from the outside by wrapping functions, so the server code itself is unchanged:

* an outermost ASGI middleware that records, per HTTP request, ``CLOCK_MONOTONIC`` times of:
  the app being called (uvicorn has parsed the headers), the body fully received, the
  response started and the response fully sent;
* wrappers around the scheduler's job execution (queue wait, run time) and the runtime's
  ``forward_backward`` / ``optim_step`` / ``sample`` (the JAX calls, which return host arrays).

``CLOCK_MONOTONIC`` is one clock for every process of the machine, so a client process can
line these times up against its own ``time.monotonic()``. ``GET /_bench/timings`` answers the
records collected since the last such call (and clears them). Prints the URL like
``tinkjax serve``. Run ``python bench/timed_server.py [--profile FILE]``; with ``--profile``
the worker thread runs under cProfile and the stats go to FILE at exit (SIGTERM).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import signal
import sys
import threading
import time
from typing import Any

RECORDS: dict[str, list[dict[str, Any]]] = {"http": [], "jobs": [], "runtime": []}
_LOCK = threading.Lock()


def _add(kind: str, row: dict[str, Any]) -> None:
    with _LOCK:
        RECORDS[kind].append(row)


class Timing:
    """Outermost ASGI middleware: per-request timestamps and the ``/_bench/timings`` route."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if path == "/_bench/timings":
            with _LOCK:
                body = json.dumps(RECORDS).encode()
                for v in RECORDS.values():
                    v.clear()
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json")]})  # fmt: skip
            await send({"type": "http.response.body", "body": body})
            return
        row: dict[str, Any] = {"path": path, "called": time.monotonic()}

        async def timed_receive() -> Any:
            msg = await receive()
            if msg.get("type") == "http.request" and not msg.get("more_body", False):
                row["body_in"] = time.monotonic()
            return msg

        async def timed_send(msg: dict[str, Any]) -> None:
            if msg["type"] == "http.response.start":
                row["status"] = msg["status"]
                row["resp_start"] = time.monotonic()
            await send(msg)
            if msg["type"] == "http.response.body" and not msg.get("more_body", False):
                row["done"] = time.monotonic()

        try:
            await self.app(scope, timed_receive, timed_send)
        finally:
            _add("http", row)


def _instrument(profile: cProfile.Profile | None) -> None:
    import tinkjax.server._launch as launch
    from tinkjax.models import ModelRuntime
    from tinkjax.server._scheduler import Scheduler

    fault_middleware = getattr(launch, "FaultMiddleware")  # noqa: B009
    setattr(  # noqa: B010
        launch, "FaultMiddleware", lambda inner, faults: Timing(fault_middleware(inner, faults))
    )

    execute = Scheduler._execute

    def timed_execute(self: Scheduler, batch: list[Any]) -> None:
        if profile is not None:
            profile.enable()
        start = time.monotonic()
        try:
            execute(self, batch)
        finally:
            end = time.monotonic()
            if profile is not None:
                profile.disable()
            for job in batch:
                _add("jobs", {"kind": job.kind, "request_id": job.request_id,
                              "enqueued": job.enqueued, "start": start, "end": end,
                              "fused": len(batch)})  # fmt: skip

    Scheduler._execute = timed_execute  # type: ignore[method-assign]

    for name in ("forward_backward", "optim_step", "sample"):
        original = getattr(ModelRuntime, name)

        def timed(self: Any, *args: Any, __f: Any = original, __n: str = name, **kw: Any) -> Any:
            start = time.monotonic()
            try:
                return __f(self, *args, **kw)
            finally:
                _add("runtime", {"call": __n, "start": start, "end": time.monotonic()})

        setattr(ModelRuntime, name, timed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--profile", default=None, help="cProfile the worker; stats to FILE")
    args = parser.parse_args()
    profile = cProfile.Profile() if args.profile else None
    _instrument(profile)
    from tinkjax.server import start

    handle = start(port=args.port)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(f"tinkjax server listening on {handle.base_url}", flush=True)
    try:
        stop.wait()
    finally:
        handle.stop()
        if profile is not None:
            profile.dump_stats(args.profile)
    sys.exit(0)


if __name__ == "__main__":
    main()
