"""Fault injection for tests: chosen endpoints answer 429 / 5xx, slow down, or drop connections.

Off by default (an empty :class:`FaultConfig`). Rules are checked in order for every HTTP request;
the first rule whose ``path`` regex matches (``re.search`` on the URL path) and whose ``methods``
include the request's method fires. A rule with ``times`` fires that many times and then stays
inert. The config is mutable at run time (``handle.faults.rules.append(...)``) and thread-safe.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["FaultConfig", "FaultMiddleware", "FaultRule"]

Scope = dict[str, Any]
Receive = Callable[[], Any]
Send = Callable[[dict[str, Any]], Any]
ASGIApp = Callable[[Scope, Receive, Send], Any]


@dataclass
class FaultRule:
    """One injected fault.

    Attributes:
        path: regular expression searched in the request path (``"/api/v1/asample$"``).
        status: answer with this HTTP status (e.g. 429, 500, 503) and a JSON body instead of
            running the endpoint; ``None``: run the endpoint normally (after ``delay_s``).
        retry_after: seconds sent as ``Retry-After`` with ``status``.
        delay_s: sleep this long before answering (latency injection).
        drop: close the connection without any response.
        times: fire at most this many times (``None``: always).
        methods: HTTP methods the rule applies to (``None``: all), e.g. ``("POST",)``.
    """

    path: str
    status: int | None = None
    retry_after: float | None = None
    delay_s: float = 0.0
    drop: bool = False
    times: int | None = None
    methods: Iterable[str] | None = None
    fired: int = 0
    """How many times the rule has fired so far."""

    def __post_init__(self) -> None:
        self._regex = re.compile(self.path)
        if self.status is not None and not 100 <= self.status <= 599:
            raise ValueError(f"status: {self.status} is not an HTTP status code")
        if self.delay_s < 0:
            raise ValueError(f"delay_s: expected >= 0, got {self.delay_s}")
        if self.times is not None and self.times < 0:
            raise ValueError(f"times: expected >= 0 or None, got {self.times}")

    def matches(self, method: str, path: str) -> bool:
        """Whether the rule applies to this request (ignores ``times``)."""
        if self.methods is not None and method.upper() not in {m.upper() for m in self.methods}:
            return False
        return self._regex.search(path) is not None


@dataclass
class FaultConfig:
    """The fault rules of a server; empty means no faults."""

    rules: list[FaultRule] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    def clear(self) -> None:
        """Remove every rule."""
        with self._lock:
            self.rules.clear()

    def take(self, method: str, path: str) -> FaultRule | None:
        """The first live rule matching the request, counted as fired; ``None`` if none."""
        with self._lock:
            for rule in self.rules:
                if rule.times is not None and rule.fired >= rule.times:
                    continue
                if rule.matches(method, path):
                    rule.fired += 1
                    return rule
        return None


async def _drop_connection(send: Send) -> None:
    """Close the client connection without sending a response.

    uvicorn hands the app the bound ``send`` of its request cycle, which holds the transport;
    closing it makes the client see a reset. Without one (another server), the response is
    started and then abandoned, which clients also see as a broken connection.
    """
    cycle = getattr(send, "__self__", None)
    transport = getattr(cycle, "transport", None)
    if transport is not None:
        transport.close()
        await asyncio.sleep(0.05)  # let connection_lost mark the cycle disconnected
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    raise ConnectionAbortedError("fault injection: connection dropped")


class FaultMiddleware:
    """ASGI middleware applying a :class:`FaultConfig` before the wrapped app runs."""

    def __init__(self, app: ASGIApp, faults: FaultConfig) -> None:
        self.app = app
        self.faults = faults

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.faults.rules:
            await self.app(scope, receive, send)
            return
        rule = self.faults.take(scope["method"], scope["path"])
        if rule is None:
            await self.app(scope, receive, send)
            return
        if rule.delay_s:
            await asyncio.sleep(rule.delay_s)
        if rule.drop:
            await _drop_connection(send)
            return
        if rule.status is None:
            await self.app(scope, receive, send)
            return
        body = json.dumps(
            {
                "detail": f"injected fault: HTTP {rule.status} for {scope['path']}",
                "type": "injected_fault",
            }
        ).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        if rule.retry_after is not None:
            headers.append((b"retry-after", f"{rule.retry_after:g}".encode()))
        await send({"type": "http.response.start", "status": rule.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
