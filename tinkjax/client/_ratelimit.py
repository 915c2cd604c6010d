"""Per-tenant rate limiting: a 429 opens a backoff window that every sampler of the same
``(base_url, api_key)`` waits through before dispatching, and no other tenant notices."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import threading
import time

from tinkjax import events

from ._backoff import backoff_delay
from ._loop import get_loop

__all__ = ["TenantRateLimiter", "limiter_for"]


class TenantRateLimiter:
    """The backoff window of one tenant.

    A 429 calls :meth:`open_window`; every dispatch first awaits :meth:`wait`. Consecutive
    429s (without a success in between) lengthen the window exponentially up to ``cap``.
    """

    def __init__(self, base_url: str, *, base: float = 1.0, cap: float = 30.0) -> None:
        self.base_url = base_url
        self.base = base
        self.cap = cap
        self._blocked_until = 0.0
        self._strikes = 0
        self._wake: asyncio.Event | None = None

    @property
    def blocked_for(self) -> float:
        """Seconds left in the current window (0 when open)."""
        return max(0.0, self._blocked_until - time.monotonic())

    async def wait(self) -> None:
        """Return once no backoff window is open (on the client loop)."""
        while (delay := self._blocked_until - time.monotonic()) > 0:
            if self._wake is None:
                self._wake = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    def clear_window(self) -> None:
        """Close the window now and wake every waiter (thread-safe)."""

        def clear() -> None:
            self._blocked_until = 0.0
            self._strikes = 0
            if self._wake is not None:
                self._wake.set()
                self._wake = None

        get_loop().call_soon_threadsafe(clear)

    def open_window(self, retry_after: float | None = None) -> float:
        """Block dispatch for ``retry_after`` s (or the next backoff delay); returns the delay."""
        delay = (
            retry_after
            if retry_after is not None
            else backoff_delay(self._strikes, base=self.base, cap=self.cap)
        )
        self._strikes += 1
        self._blocked_until = max(self._blocked_until, time.monotonic() + delay)
        events.emit(
            ("tinkjax", "ratelimit", "window"), {"delay_s": delay}, {"base_url": self.base_url}
        )
        return delay

    def record_success(self) -> None:
        """A request got through: the next 429 starts the backoff from the beginning."""
        self._strikes = 0


_lock = threading.Lock()
_limiters: dict[tuple[str, str], TenantRateLimiter] = {}


def limiter_for(base_url: str, api_key: str | None) -> TenantRateLimiter:
    """The process-wide limiter of the tenant ``(base_url, api_key)`` (the key is hashed)."""
    digest = hashlib.sha256((api_key or "").encode()).hexdigest()
    with _lock:
        lim = _limiters.get((base_url, digest))
        if lim is None:
            lim = _limiters[(base_url, digest)] = TenantRateLimiter(base_url)
        return lim
