"""Fault injection for tests: chosen endpoints answer 429 / 5xx, slow down, hang, answer a
broken body, apply the request and then fail, or drop connections.

Off by default (an empty :class:`FaultConfig`). Rules are checked in order for every HTTP request;
the first rule whose ``path`` regex matches (``re.search`` on the URL path), whose ``methods``
include the request's method and whose ``api_key`` (if set) is the request's fires. A rule with
``times`` fires that many times and then stays inert. The config is mutable at run time
(``handle.faults.rules.append(...)``) and thread-safe.

:class:`FaultRule` is the one fault vocabulary of the project: the server applies it here, and
the client tests' fake service (``tests/client/fake.py``) applies the same rules to an
``httpx.MockTransport``.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
from collections.abc import Callable, Iterable, Mapping
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
        body: the body answered with ``status`` (default: a JSON ``detail``).
        headers: extra headers answered with ``status``.
        retry_after: seconds sent as ``Retry-After`` with ``status``.
        delay_s: sleep this long before answering (latency injection).
        drop: close the connection without any response (the client sees a reset).
        hang: never answer (the client's read times out); the request is not run.
        malformed: answer 200 with a truncated JSON body; the request is not run.
        after: run the endpoint (the request is applied), then answer ``status`` instead of its
            response: a client that retries must not apply it twice.
        times: fire at most this many times (``None``: always).
        methods: HTTP methods the rule applies to (``None``: all), e.g. ``("POST",)``.
        api_key: only requests with this ``X-API-Key`` (``None``: any).
    """

    path: str
    status: int | None = None
    body: bytes | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    retry_after: float | None = None
    delay_s: float = 0.0
    drop: bool = False
    hang: bool = False
    malformed: bool = False
    after: bool = False
    times: int | None = None
    methods: Iterable[str] | None = None
    api_key: str | None = None
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
        if self.after and self.status is None:
            raise ValueError("after: needs the status to answer once the request has run")
        if sum((self.drop, self.hang, self.malformed, self.after)) > 1:
            raise ValueError("drop, hang, malformed and after are exclusive")

    def answer(self, path: str) -> tuple[int, bytes, list[tuple[str, str]]]:
        """The status, body and headers this rule answers with (``status`` rules)."""
        assert self.status is not None
        body = self.body
        if body is None:
            body = json.dumps(
                {
                    "detail": f"injected fault: HTTP {self.status} for {path}",
                    "type": "injected_fault",
                }
            ).encode()
        headers = [("content-type", "application/json"), *self.headers.items()]
        if self.retry_after is not None:
            headers.append(("retry-after", f"{self.retry_after:g}"))
        return self.status, body, headers

    def matches(self, method: str, path: str, api_key: str | None = None) -> bool:
        """Whether the rule applies to this request (ignores ``times``)."""
        if self.methods is not None and method.upper() not in {m.upper() for m in self.methods}:
            return False
        if self.api_key is not None and api_key != self.api_key:
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

    def take(self, method: str, path: str, api_key: str | None = None) -> FaultRule | None:
        """The first live rule matching the request, counted as fired; ``None`` if none."""
        with self._lock:
            for rule in self.rules:
                if rule.times is not None and rule.fired >= rule.times:
                    continue
                if rule.matches(method, path, api_key):
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
        api_key = next(
            (v.decode("latin-1") for k, v in scope.get("headers", ()) if k == b"x-api-key"), None
        )
        rule = self.faults.take(scope["method"], scope["path"], api_key)
        if rule is None:
            await self.app(scope, receive, send)
            return
        if rule.delay_s:
            await asyncio.sleep(rule.delay_s)
        if rule.drop:
            await _drop_connection(send)
            return
        if rule.hang:
            while (await receive())["type"] != "http.disconnect":
                pass  # the body, then nothing until the client gives up
            return
        if rule.malformed:
            await _send(send, 200, b'{"request_id": ', [("content-type", "application/json")])
            return
        if rule.status is None:
            await self.app(scope, receive, send)
            return
        if rule.after:
            await self.app(scope, receive, _swallow)
        await _send(send, *rule.answer(scope["path"]))


async def _swallow(message: dict[str, Any]) -> None:
    """An ASGI ``send`` that discards the response (an ``after`` rule answers instead)."""


async def _send(send: Send, status: int, body: bytes, headers: list[tuple[str, str]]) -> None:
    raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]
    raw.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
