"""Futures of submitted requests: created by handlers, completed by the worker thread, awaited
by ``retrieve_future`` long-polls on the event loop."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["FutureRecord", "FutureTable"]

Category = Literal["user", "server", "unknown"]


@dataclass
class FutureRecord:
    """One request's future.

    Attributes:
        request_id: the id the client polls.
        kind: what the request does (``forward_backward``, ``sample``, ...).
        state: ``pending``, ``done`` or ``failed``.
        result: the result object (a wire Struct) once done.
        error: the failure message once failed.
        category: who is to blame for a failure.
        owner: the tenant whose request it is (``None`` until claimed: visible to nobody).
    """

    request_id: str
    kind: str
    state: Literal["pending", "done", "failed"] = "pending"
    result: Any = None
    error: str | None = None
    category: Category = "unknown"
    owner: str | None = None
    created: float = field(default_factory=time.monotonic)
    waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = field(default_factory=list)


class FutureTable:
    """Thread-safe table ``request_id -> FutureRecord``.

    Finished futures are kept so that a repeated poll (after a client timeout) is answered
    again; beyond ``max_finished`` the oldest finished ones are forgotten (their ids then
    answer 404), which keeps memory flat over long runs.
    """

    def __init__(self, *, max_finished: int = 10_000) -> None:
        self._lock = threading.Lock()
        self._records: dict[str, FutureRecord] = {}
        self._finished: collections.deque[str] = collections.deque()
        self.max_finished = max_finished

    def create(self, request_id: str, kind: str) -> FutureRecord:
        """Register a pending future."""
        with self._lock:
            record = FutureRecord(request_id=request_id, kind=kind)
            self._records[request_id] = record
            return record

    def get(self, request_id: str) -> FutureRecord | None:
        """The record, or ``None`` for an unknown id."""
        with self._lock:
            return self._records.get(request_id)

    def claim(self, request_id: str, owner: str) -> None:
        """Give an unclaimed future to ``owner`` (the tenant that submitted its request)."""
        with self._lock:
            record = self._records.get(request_id)
            if record is not None and record.owner is None:
                record.owner = owner

    def complete(self, request_id: str, result: Any) -> None:
        """Mark done with ``result`` and wake the pollers."""
        self._finish(request_id, "done", result=result)

    def fail(self, request_id: str, message: str, category: Category = "user") -> None:
        """Mark failed and wake the pollers."""
        self._finish(request_id, "failed", error=message, category=category)

    def _finish(self, request_id: str, state: Literal["done", "failed"], **values: Any) -> None:
        with self._lock:
            record = self._records.get(request_id)
            if record is None or record.state != "pending":
                return
            record.state = state
            for key, value in values.items():
                setattr(record, key, value)
            waiters, record.waiters = record.waiters, []
            self._finished.append(request_id)
            while len(self._finished) > self.max_finished:
                self._records.pop(self._finished.popleft(), None)
        for loop, event in waiters:
            with contextlib.suppress(RuntimeError):  # a closed loop: the poller is gone
                loop.call_soon_threadsafe(event.set)

    async def wait(self, request_id: str, timeout: float) -> FutureRecord | None:
        """The record once it is finished, or still pending after ``timeout`` seconds.

        Returns ``None`` for an unknown id.
        """
        with self._lock:
            record = self._records.get(request_id)
            if record is None or record.state != "pending" or timeout <= 0:
                return record
            event = asyncio.Event()
            entry = (asyncio.get_running_loop(), event)
            record.waiters.append(entry)
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            pass
        finally:
            with self._lock:
                if entry in record.waiters:
                    record.waiters.remove(entry)
        return record

    def wake_all(self) -> None:
        """Wake every poller (at shutdown), leaving the states as they are."""
        with self._lock:
            waiters = [w for r in self._records.values() for w in r.waiters]
        for loop, event in waiters:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(event.set)

    def __len__(self) -> int:
        with self._lock:
            return len(self._records)
