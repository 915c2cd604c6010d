"""``with_retry`` / ``with_retry_async``: retry any call of yours with a :class:`RetryHandler`,
on the one backoff utility (:class:`~._backoff.Backoff`), emitting retry events.

Events (all with ``name`` and the ``metadata`` given to the call in their metadata):

==========================  ==================================  ==============================
event                       measurements                        metadata
==========================  ==================================  ==============================
``tinkjax.retry.start``     ``system_time``                     ``max_retries``
``tinkjax.retry.attempt``   ``attempt``, ``delay_s``,           ``error_type``, ``error``
                            ``duration_s`` (of the failed try)
``tinkjax.retry.stop``      ``attempts``, ``duration_s``
``tinkjax.retry.failed``    ``attempts``, ``duration_s``        ``error_type``, ``error``,
                                                                ``reason`` (``not_retryable``
                                                                or ``max_retries``)
==========================  ==================================  ==============================

``retry.attempt`` is emitted for each failed try that will be retried, before its delay.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from tinkjax import events
from tinkjax.errors import APIConnectionError, APIStatusError

from ._backoff import Backoff
from ._transport import is_retryable_status

__all__ = ["RetryHandler", "default_retryable", "with_retry", "with_retry_async"]

T = TypeVar("T")


def default_retryable(exc: BaseException) -> bool:
    """What the transport retries: no answer (connection errors, timeouts) and the statuses
    worth retrying (408, 409, 429, 5xx)."""
    if isinstance(exc, APIConnectionError):
        return True
    return isinstance(exc, APIStatusError) and is_retryable_status(exc.status_code)


@dataclass(frozen=True)
class RetryHandler:
    """How :func:`with_retry` retries.

    Attributes:
        max_retries: retries after the first try (0: try once).
        base_delay: first delay, seconds; it doubles per retry up to ``max_delay``.
        max_delay: the largest delay, seconds.
        jitter: each delay is scaled by a factor in ``[1 - jitter, 1]`` (0 to 1).
        retry_on: which errors retry: exception types, or a predicate over the exception
            (default :func:`default_retryable`). A server's ``retry_after`` on the exception
            (as tinkjax's status errors carry it) replaces the computed delay.
        name: names the retried operation in the events.
    """

    max_retries: int = 3
    base_delay: float = 0.5
    max_delay: float = 10.0
    jitter: float = 0.25
    retry_on: tuple[type[BaseException], ...] | Callable[[BaseException], bool] = field(
        default=default_retryable
    )
    name: str = "with_retry"

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries!r}")
        if not self.base_delay >= 0:
            raise ValueError(f"base_delay must be >= 0, got {self.base_delay!r}")
        if not self.max_delay >= self.base_delay:
            raise ValueError(
                f"max_delay ({self.max_delay!r}) must be >= base_delay ({self.base_delay!r})"
            )
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError(f"jitter must be in [0, 1], got {self.jitter!r}")
        if not (isinstance(self.retry_on, tuple) or callable(self.retry_on)):
            raise ValueError(
                f"retry_on must be a tuple of types or a predicate, got {self.retry_on!r}"
            )

    def should_retry(self, exc: BaseException) -> bool:
        """Whether ``exc`` is one this handler retries."""
        if isinstance(self.retry_on, tuple):
            return isinstance(exc, self.retry_on)
        return bool(self.retry_on(exc))

    def schedule(self) -> Backoff:
        """A fresh delay schedule for one call."""
        return Backoff(base=self.base_delay, cap=self.max_delay, jitter=self.jitter)


class _Attempts:
    """The bookkeeping and events shared by the sync and async loops."""

    def __init__(self, handler: RetryHandler, metadata: Mapping[str, Any] | None) -> None:
        self.handler = handler
        self.meta = {"name": handler.name, **(metadata or {})}
        self.backoff = handler.schedule()
        self.started = time.perf_counter()
        self.attempt = 0
        events.emit(
            ("tinkjax", "retry", "start"),
            {"system_time": time.time()},
            {**self.meta, "max_retries": handler.max_retries},
        )

    def succeeded(self) -> None:
        events.emit(
            ("tinkjax", "retry", "stop"),
            {"attempts": self.attempt + 1, "duration_s": time.perf_counter() - self.started},
            self.meta,
        )

    def failed(self, exc: BaseException, try_started: float) -> float | None:
        """The delay before the next try, or ``None`` to give up (``retry.failed`` emitted)."""
        error = {"error_type": type(exc).__name__, "error": str(exc)[:500]}
        retryable = self.handler.should_retry(exc)
        if not retryable or self.attempt >= self.handler.max_retries:
            events.emit(
                ("tinkjax", "retry", "failed"),
                {"attempts": self.attempt + 1, "duration_s": time.perf_counter() - self.started},
                {**self.meta, **error, "reason": "max_retries" if retryable else "not_retryable"},
            )
            return None
        hint = getattr(exc, "retry_after", None)
        delay = self.backoff.next(hint if isinstance(hint, (int, float)) else None)
        self.attempt += 1
        events.emit(
            ("tinkjax", "retry", "attempt"),
            {
                "attempt": self.attempt,
                "delay_s": delay,
                "duration_s": time.perf_counter() - try_started,
            },
            {**self.meta, **error},
        )
        return delay


def with_retry(
    fn: Callable[[], T],
    handler: RetryHandler | None = None,
    *,
    metadata: Mapping[str, Any] | None = None,
) -> T:
    """Call ``fn()`` until it returns, retrying the errors ``handler`` retries (sleeping in
    between; this blocks the calling thread by design). Re-raises the last error.

    Example::

        result = with_retry(lambda: training.forward_backward(data, "cross_entropy").result(),
                            RetryHandler(max_retries=5, base_delay=0.2))
    """
    attempts = _Attempts(handler or RetryHandler(), metadata)
    while True:
        t0 = time.perf_counter()
        try:
            result = fn()
        except Exception as exc:
            delay = attempts.failed(exc, t0)
            if delay is None:
                raise
            time.sleep(delay)
        else:
            attempts.succeeded()
            return result


async def with_retry_async(
    fn: Callable[[], Awaitable[T]],
    handler: RetryHandler | None = None,
    *,
    metadata: Mapping[str, Any] | None = None,
) -> T:
    """Async twin of :func:`with_retry`: ``fn()`` returns an awaitable (a coroutine function,
    or a call returning an ``APIFuture``), awaited each try; delays use ``asyncio.sleep``."""
    attempts = _Attempts(handler or RetryHandler(), metadata)
    while True:
        t0 = time.perf_counter()
        try:
            result = await fn()
        except Exception as exc:
            delay = attempts.failed(exc, t0)
            if delay is None:
                raise
            await asyncio.sleep(delay)
        else:
            attempts.succeeded()
            return result
