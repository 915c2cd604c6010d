"""``TelemetryReporter``: the session's events, batched to the service's ``POST /api/v1/telemetry``.

Every :class:`~tinkjax.client.ServiceClient` starts one (``service.telemetry_reporter``, the
official ``service.get_telemetry()``) unless ``TINKER_TELEMETRY`` is off. The requests are the
official SDK's (``TelemetrySendRequest``: ``events``, ``platform``, ``sdk_version``,
``session_id``, ``process_uuid``), so the hosted service and the local backend both accept them.

What it sends:

- ``SESSION_START`` when it starts, ``SESSION_END`` once, on :meth:`~TelemetryReporter.stop`
  or :meth:`~TelemetryReporter.log_fatal_exception`;
- :meth:`~TelemetryReporter.log` events (``GENERIC_EVENT``), exceptions
  (:meth:`~TelemetryReporter.log_exception`: ``UNHANDLED_EXCEPTION``, or a ``user_error``
  ``GENERIC_EVENT`` for 4xx-class errors, as the official SDK does);
- the session's own :mod:`tinkjax.events` (``request.stop``/``request.exception``,
  ``future.queue_state`` and the custom-loss and regularizer events of its models), each as a
  ``GENERIC_EVENT`` named after the event (``"tinkjax.request.stop"``) with
  ``{"measurements": ..., "metadata": ...}`` as its data. Requests to ``/telemetry`` itself are
  not forwarded.

How (the guarantees):

- **Never in the way.** Logging an event only appends it to a queue under a lock (a few µs);
  sending happens on the client's background loop. No method raises into user code (bad
  arguments are logged and refused with ``False``); no method a training call goes through
  ever waits on the network.
- **Bounded.** At most ``max_queue_size`` events are held (including the batch being sent);
  beyond that new events are dropped and counted (:attr:`~TelemetryReporter.dropped`).
- **Ordered, nothing lost across failures.** A batch leaves the queue only once the backend
  answered 2xx: a failed send (connection error, 408/409/429/5xx) is retried ``max_retries``
  times with :class:`~._backoff.Backoff`, then left at the head of the queue for the next
  flush. A batch the backend refuses outright (another 4xx) is dropped and counted: resending
  it cannot succeed. Each batch carries one idempotency key across its retries and every event
  its own ``event_id``, so a batch whose answer was lost is not stored twice by the local
  backend.
- **Batching.** A flush runs every ``flush_interval`` seconds and as soon as
  ``flush_threshold`` events are queued; it posts ``max_batch_size`` events at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import platform
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

from tinkjax import events
from tinkjax._version import __version__
from tinkjax.errors import APIError, APIStatusError
from tinkjax.types import Severity, TelemetryEvent, TelemetrySendRequest

from ._backoff import Backoff
from ._loop import get_loop, on_loop_thread
from ._telemetry_events import (
    ForwardedEvent,
    check_severity,
    exception_event,
    generic_event,
    materialize,
    new_event_id,
    process_uuid,
    session_end_event,
    session_start_event,
)
from ._transport import Transport, is_retryable_status

__all__ = ["SessionSource", "TelemetryReporter", "telemetry_enabled"]

logger = logging.getLogger("tinkjax.telemetry")

TELEMETRY_PATH = "/api/v1/telemetry"
#: How long :meth:`TelemetryReporter.stop` waits when the backend already looks unreachable.
_STOP_WHEN_FAILING_S = 1.0

#: The events of :mod:`tinkjax.events` a reporter forwards (those of its own session).
FORWARDED_EVENTS: tuple[str, ...] = (
    "tinkjax.request.stop",
    "tinkjax.request.exception",
    "tinkjax.future.queue_state",
    "tinkjax.custom_loss.start",
    "tinkjax.custom_loss.stop",
    "tinkjax.custom_loss.exception",
    "tinkjax.regularizer.compute",
    "tinkjax.session.heartbeat_failed",
)
_ERROR_EVENTS = frozenset(
    {("tinkjax", "request", "exception"), ("tinkjax", "custom_loss", "exception")}
)
_MODEL_EVENTS = frozenset({"custom_loss", "regularizer"})


def telemetry_enabled(environ: Mapping[str, str] | None = None) -> bool:
    """``TINKER_TELEMETRY`` as the official SDK reads it: on when unset, else on only for
    ``1``/``true``/``yes``/``on`` (any case)."""
    value = (os.environ if environ is None else environ).get("TINKER_TELEMETRY")
    return value is None or value.strip().lower() in {"1", "true", "yes", "on"}


class SessionSource(Protocol):
    """What a reporter needs of its session (a :class:`~._session.SessionContext`)."""

    @property
    def session_id_if_ready(self) -> str | None: ...

    async def get_session_id(self) -> str: ...


class TelemetryReporter:
    """Batches telemetry events and posts them to the service in the background.

    Args:
        transport: the session's transport (the reporter's requests go through it, with its
            own retries and timeout).
        session: the session the events belong to; batches are sent once its id is known (a
            session that could not be created gives a ``sessionless-<uuid>`` id).
        flush_interval: seconds between periodic flushes (10).
        flush_threshold: queued events that trigger a flush at once (100).
        max_batch_size: events per request (100).
        max_queue_size: the most events held; more are dropped and counted (10,000).
        http_timeout: read timeout of one send, seconds (5).
        max_retries: retries of a failed send before it waits for the next flush (3).
        retry_base_delay: first retry delay, seconds (1); it doubles up to
            ``retry_max_delay`` (10) with jitter (:class:`~._backoff.Backoff`).
        forward_events: forward the session's :mod:`tinkjax.events` (on by default).

    Attributes:
        session_id: the id the batches carry, once known (else ``None``).
        dropped: events dropped so far (queue full, refused by the backend, unsent at
            :meth:`stop`).
        sent: events the backend acknowledged.
    """

    def __init__(
        self,
        transport: Transport,
        session: SessionSource,
        *,
        flush_interval: float = 10.0,
        flush_threshold: int = 100,
        max_batch_size: int = 100,
        max_queue_size: int = 10_000,
        http_timeout: float = 5.0,
        max_retries: int = 3,
        retry_base_delay: float = 1.0,
        retry_max_delay: float = 10.0,
        forward_events: bool = True,
    ) -> None:
        for name, value in (
            ("flush_interval", flush_interval),
            ("http_timeout", http_timeout),
            ("retry_base_delay", retry_base_delay),
            ("retry_max_delay", retry_max_delay),
        ):
            if not value > 0:
                raise ValueError(f"{name} must be > 0, got {value!r}")
        for name, count in (
            ("flush_threshold", flush_threshold),
            ("max_batch_size", max_batch_size),
            ("max_queue_size", max_queue_size),
        ):
            if count < 1:
                raise ValueError(f"{name} must be >= 1, got {count!r}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries!r}")
        self._transport = transport
        self._session = session
        self.flush_interval = float(flush_interval)
        self.flush_threshold = int(flush_threshold)
        self.max_batch_size = int(max_batch_size)
        self.max_queue_size = int(max_queue_size)
        self.http_timeout = float(http_timeout)
        self.max_retries = int(max_retries)
        self.retry_base_delay = float(retry_base_delay)
        self.retry_max_delay = float(retry_max_delay)
        self.session_id: str | None = None
        self.dropped = 0
        self.sent = 0
        self._started_at = datetime.now(UTC)
        self._lock = threading.Lock()
        self._drained = threading.Condition(self._lock)
        self._queue: deque[TelemetryEvent | ForwardedEvent] = deque()
        self._index = 0
        self._accepted = 0  # events ever queued
        self._removed = 0  # events that left the queue (sent or dropped)
        self._ended = False  # SESSION_END queued
        self._stopped = False
        self._signalled = False
        self._failing = False  # the last send used up its retries
        self._models: set[str] = set()
        self._loop = get_loop()
        self._wake = asyncio.Event()  # only touched on the loop
        self._handler_id = f"tinkjax.telemetry.reporter.{uuid.uuid4().hex}"
        self._task: asyncio.Task[None] | None = None
        self._push(lambda i: session_start_event(i, self._started_at))
        if on_loop_thread():
            self._start_task()
        else:
            self._loop.call_soon_threadsafe(self._start_task)
        if forward_events:
            events.attach(self._handler_id, list(FORWARDED_EVENTS), self._on_event)

    def __repr__(self) -> str:
        return (
            f"TelemetryReporter(session_id={self.session_id!r}, queued={self.queued}, "
            f"sent={self.sent}, dropped={self.dropped}, stopped={self._stopped})"
        )

    @property
    def queued(self) -> int:
        """Events waiting to be sent (including the batch being sent)."""
        return len(self._queue)

    @property
    def stopped(self) -> bool:
        return self._stopped

    def pending(self) -> list[TelemetryEvent]:
        """The queued events, oldest first, as they will be sent (a copy)."""
        with self._lock:
            items = list(self._queue)
        return [materialize(item) for item in items]

    # ---------------------------------------------------------------- logging
    def log(
        self,
        event_name: str,
        event_data: Mapping[str, Any] | None = None,
        severity: Severity | str = "INFO",
    ) -> bool:
        """Queue a ``GENERIC_EVENT``; returns whether it was queued (``False`` when stopped,
        the queue is full, or an argument is bad: logged, never raised).

        ``event_data`` values that are not JSON become their ``repr``; data over 32 KiB is
        replaced by a note of its size and keys.
        """
        try:
            level = check_severity(severity)
            if not isinstance(event_name, str) or not event_name:
                raise ValueError(f"event_name must be a non-empty str, got {event_name!r}")
        except ValueError as exc:
            logger.warning("telemetry event refused: %s", exc)
            return False
        return self._push(lambda i: generic_event(i, event_name, event_data, level))

    def log_exception(self, exception: BaseException, severity: Severity | str = "ERROR") -> bool:
        """Queue ``exception`` (``UNHANDLED_EXCEPTION`` with its traceback, or ``user_error``
        for a user error) and start a flush without waiting for it."""
        level = self._severity(severity)
        logged = self._push(lambda i: exception_event(i, exception, level))
        self._signal()
        return logged

    def log_fatal_exception(
        self,
        exception: BaseException,
        severity: Severity | str = "ERROR",
        *,
        timeout: float = 30.0,
    ) -> bool:
        """Queue ``exception`` and ``SESSION_END``, then flush synchronously: returns once the
        backend has everything queued so far, or after ``timeout`` seconds (on the client loop
        itself it cannot wait and only starts the flush). Returns whether the events were
        queued."""
        level = self._severity(severity)
        logged = self._push(lambda i: exception_event(i, exception, level))
        self._end_session()
        if not on_loop_thread():
            self.wait_until_drained(timeout)
        else:
            self._signal()
        return logged

    async def log_fatal_exception_async(
        self,
        exception: BaseException,
        severity: Severity | str = "ERROR",
        *,
        timeout: float = 30.0,
    ) -> bool:
        """Async twin of :meth:`log_fatal_exception`."""
        level = self._severity(severity)
        logged = self._push(lambda i: exception_event(i, exception, level))
        self._end_session()
        await self.wait_until_drained_async(timeout)
        return logged

    # The official SDK's names (its ``log_exception``/``log_fatal_exception`` are coroutines).
    def log_exception_sync(self, exception: BaseException, severity: Severity = "ERROR") -> bool:
        """The official SDK's name of :meth:`log_exception`."""
        return self.log_exception(exception, severity)

    def log_fatal_exception_sync(
        self, exception: BaseException, severity: Severity = "ERROR"
    ) -> bool:
        """The official SDK's name of :meth:`log_fatal_exception`."""
        return self.log_fatal_exception(exception, severity)

    @contextlib.contextmanager
    def capture_exceptions(
        self, fatal: bool = False, severity: Severity = "ERROR"
    ) -> Iterator[None]:
        """Report an exception raised in the block (fatal: and end the session), re-raise it.

        The official SDK's ``Telemetry.capture_exceptions``; see also
        :func:`tinkjax.client.capture_exceptions`, which is also a decorator.
        """
        try:
            yield
        except Exception as exc:
            if fatal:
                self.log_fatal_exception(exc, severity)
            else:
                self.log_exception(exc, severity)
            raise

    @contextlib.asynccontextmanager
    async def acapture_exceptions(
        self, fatal: bool = False, severity: Severity = "ERROR"
    ) -> AsyncIterator[None]:
        """Async twin of :meth:`capture_exceptions`."""
        try:
            yield
        except Exception as exc:
            if fatal:
                await self.log_fatal_exception_async(exc, severity)
            else:
                self.log_exception(exc, severity)
            raise

    # ---------------------------------------------------------------- drain, stop
    def wait_until_drained(self, timeout: float = 30.0) -> bool:
        """Flush now and wait until the backend acknowledged (or refused) every event queued
        before the call; ``False`` after ``timeout`` seconds. On the client loop's own thread
        it cannot wait: it starts the flush and says whether the queue is already empty."""
        with self._lock:
            target = self._accepted
        self._signal()
        if on_loop_thread():
            logger.warning("wait_until_drained cannot block the client loop; use the async twin")
            with self._lock:
                return self._removed >= target
        with self._drained:
            return self._drained.wait_for(lambda: self._removed >= target, timeout=timeout)

    async def wait_until_drained_async(self, timeout: float = 30.0) -> bool:
        """Async twin of :meth:`wait_until_drained` (any loop, the client's included)."""
        with self._lock:
            target = self._accepted
        self._signal()
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                if self._removed >= target:
                    return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.01)

    def stop(self, timeout: float = 5.0) -> bool:
        """Queue ``SESSION_END`` (once), flush, stop forwarding and the background task.

        Idempotent; returns whether everything was delivered within ``timeout`` seconds
        (events still unsent then are dropped and counted). When the last send already used
        up its retries (the backend is unreachable) it waits at most 1 s, so closing a client
        is not held up by telemetry. On the client loop's own thread it does not wait.
        """
        if self._stopped:
            return True
        self._end_session()
        drained = self.wait_until_drained(self._stop_timeout(timeout))
        self._shutdown()
        return drained

    async def stop_async(self, timeout: float = 5.0) -> bool:
        """Async twin of :meth:`stop`."""
        if self._stopped:
            return True
        self._end_session()
        drained = await self.wait_until_drained_async(self._stop_timeout(timeout))
        self._shutdown()
        return drained

    def _stop_timeout(self, timeout: float) -> float:
        return min(timeout, _STOP_WHEN_FAILING_S) if self._failing else timeout

    def _shutdown(self) -> None:
        events.detach(self._handler_id)
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            unsent = len(self._queue)
            self.dropped += unsent
            self._removed += unsent
            self._queue.clear()
            self._drained.notify_all()
        if unsent:
            logger.warning("telemetry: %d events were not delivered before stop()", unsent)
        with contextlib.suppress(RuntimeError):  # the loop is closed (interpreter shutdown)
            self._loop.call_soon_threadsafe(self._cancel_task)

    def _start_task(self) -> None:
        if not self._stopped:
            self._task = self._loop.create_task(self._run(), name="tinkjax-telemetry")

    def _cancel_task(self) -> None:
        if self._task is not None:
            self._task.cancel()

    # ---------------------------------------------------------------- internals
    def _severity(self, severity: Severity | str) -> Severity:
        try:
            return check_severity(severity)
        except ValueError as exc:
            logger.warning("telemetry: %s; using ERROR", exc)
            return "ERROR"

    def _end_session(self) -> None:
        with self._lock:
            if self._ended:
                return
            self._ended = True
        self._push(lambda i: session_end_event(i, self._started_at))

    def _push(self, make: Callable[[int], TelemetryEvent]) -> bool:
        """Build (with the next session index) and queue one event, under the lock, so the
        indices follow the queue's order. Never raises."""
        with self._lock:
            if self._stopped:
                return False
            if len(self._queue) >= self.max_queue_size:
                self.dropped += 1
                if self.dropped == 1 or self.dropped % 1000 == 0:
                    logger.warning("telemetry queue full: %d events dropped so far", self.dropped)
                return False
            try:
                event = make(self._index)
            except Exception:
                logger.warning("could not build a telemetry event", exc_info=True)
                return False
            self._index += 1
            self._queue.append(event)
            self._accepted += 1
            signal = len(self._queue) >= self.flush_threshold and not self._signalled
            if signal:
                self._signalled = True
        if signal:
            self._signal()
        return True

    def _signal(self) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed (interpreter shutdown)
            self._loop.call_soon_threadsafe(self._wake.set)

    def _on_event(
        self, name: events.EventName, measurements: Mapping[str, Any], metadata: Mapping[str, Any]
    ) -> None:
        own = self._session.session_id_if_ready
        if own is None:
            return
        if name[1] in _MODEL_EVENTS:
            if metadata.get("model_id") not in self._models:
                return
        else:
            if metadata.get("session_id") != own or metadata.get("path") == TELEMETRY_PATH:
                return
            model_id = metadata.get("model_id")
            if model_id is not None and model_id not in self._models:
                self._models.add(model_id)
        if name in _ERROR_EVENTS:
            severity: Severity = "ERROR"
        elif isinstance(status := metadata.get("status"), int) and status >= 400:
            severity = "WARNING"
        else:
            severity = "INFO"
        data = {"measurements": dict(measurements), "metadata": dict(metadata)}
        with self._lock:
            if self._stopped:
                return
            if len(self._queue) >= self.max_queue_size:
                self.dropped += 1
                return
            item = ForwardedEvent(
                self._index, new_event_id(), ".".join(name), data, severity, time.time()
            )
            self._index += 1
            self._queue.append(item)
            self._accepted += 1
            signal = len(self._queue) >= self.flush_threshold and not self._signalled
            if signal:
                self._signalled = True
        if signal:
            self._signal()

    async def _run(self) -> None:
        try:
            self.session_id = await self._session.get_session_id()
        except Exception as exc:
            self.session_id = f"sessionless-{uuid.uuid4()}"
            logger.debug("telemetry without a session (%s): %s", exc, self.session_id)
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.flush_interval)
            self._wake.clear()
            with self._lock:
                self._signalled = False
            await self._flush()

    async def _flush(self) -> None:
        """Send queued batches in order until the queue is empty or a send failed."""
        while True:
            with self._lock:
                items = list(itertools.islice(self._queue, self.max_batch_size))
            if not items:
                return
            batch = [materialize(item) for item in items]
            outcome = await self._send(batch)
            self._failing = outcome == "failed"
            if outcome == "failed":
                return
            with self._lock:
                if self._stopped:
                    return
                for _ in batch:
                    self._queue.popleft()
                self._removed += len(batch)
                if outcome == "sent":
                    self.sent += len(batch)
                else:
                    self.dropped += len(batch)
                self._drained.notify_all()

    async def _send(self, batch: list[TelemetryEvent]) -> str:
        """``"sent"``, ``"refused"`` (a 4xx other than 408/409/429: resending cannot help) or
        ``"failed"`` (retries used up)."""
        assert self.session_id is not None
        request = TelemetrySendRequest(
            events=batch,
            platform=platform.system(),
            sdk_version=__version__,
            session_id=self.session_id,
            process_uuid=process_uuid(),
        )
        headers = {"X-Idempotency-Key": f"tinkjax-telemetry-{uuid.uuid4()}"}
        backoff = Backoff(base=self.retry_base_delay, cap=self.retry_max_delay)
        for attempt in range(self.max_retries + 1):
            hint: float | None = None
            try:
                await self._transport.request(
                    "POST",
                    TELEMETRY_PATH,
                    json=request,
                    headers=headers,
                    max_retries=0,
                    timeout=self.http_timeout,
                    ids={"session_id": self.session_id},
                )
                return "sent"
            except APIStatusError as exc:
                if not is_retryable_status(exc.status_code):
                    logger.warning("telemetry batch of %d refused: %s", len(batch), exc)
                    return "refused"
                hint = getattr(exc, "retry_after", None)
                error: Exception = exc
            except APIError as exc:
                error = exc
            except Exception as exc:  # the transport is closed, an encoding bug: keep going
                error = exc
            if self._transport.closed:
                return "failed"
            if attempt < self.max_retries:
                await asyncio.sleep(backoff.next(hint))
        logger.debug("telemetry send failed %d times: %s", self.max_retries + 1, error)
        return "failed"
