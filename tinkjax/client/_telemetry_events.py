"""Building the telemetry events the reporter posts: wire Structs of ``tinkjax.types``, event
data made JSON-safe and size-capped when it is logged (so a bad value can never make a whole
batch unsendable), and the official SDK's user-error classification."""

from __future__ import annotations

import os
import threading
import traceback
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, NamedTuple

import msgspec

from tinkjax.errors import RequestErrorCategory, RequestFailedError
from tinkjax.types import (
    GenericEvent,
    SessionEndEvent,
    SessionStartEvent,
    Severity,
    TelemetryEvent,
    UnhandledExceptionEvent,
)

__all__ = [
    "MAX_EVENT_DATA_BYTES",
    "SEVERITIES",
    "ForwardedEvent",
    "exception_event",
    "generic_event",
    "is_user_error",
    "json_safe",
    "materialize",
    "new_event_id",
    "process_uuid",
    "session_end_event",
    "session_start_event",
]

#: Event data larger than this (its JSON encoding) is replaced by a note saying so: the local
#: backend refuses events over 64 KiB, and one refused event would fail its whole batch.
MAX_EVENT_DATA_BYTES = 32 * 1024
#: Tracebacks are cut to their last this many characters for the same reason.
_MAX_TRACEBACK_CHARS = 16 * 1024

SEVERITIES: frozenset[str] = frozenset({"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"})

_encoder = msgspec.json.Encoder()
_uuid_lock = threading.Lock()
_process: tuple[int, str] | None = None


def process_uuid() -> str:
    """A UUID for this process, shared by every reporter in it (a forked child gets its own)."""
    global _process
    with _uuid_lock:
        if _process is None or _process[0] != os.getpid():
            _process = (os.getpid(), str(uuid.uuid4()))
        return _process[1]


def new_event_id() -> str:
    """A random (version 4) UUID as text, without :class:`uuid.UUID`'s costlier constructor."""
    b = bytearray(os.urandom(16))
    b[6] = (b[6] & 0x0F) | 0x40
    b[8] = (b[8] & 0x3F) | 0x80
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _now() -> datetime:
    return datetime.now(UTC)


def _fallback(obj: Any) -> Any:
    return repr(obj)


def json_safe(data: Mapping[str, Any] | None) -> dict[str, Any]:
    """``data`` as JSON builtins (anything else becomes its ``repr``), or a short note when its
    encoding is over :data:`MAX_EVENT_DATA_BYTES`. Never raises."""
    if not data:
        return {}
    try:
        built = msgspec.to_builtins(dict(data), enc_hook=_fallback, str_keys=True)
        size = len(_encoder.encode(built))
    except Exception as exc:  # a mapping that cannot even be iterated, a failing repr
        return {"unencodable": f"{type(exc).__name__}: {exc}"[:500]}
    if size > MAX_EVENT_DATA_BYTES:
        return {"truncated": True, "bytes": size, "keys": sorted(map(str, built))[:50]}
    return built  # type: ignore[no-any-return]


def check_severity(severity: str) -> Severity:
    """``severity`` upper-cased, or ``ValueError`` naming it."""
    value = str(severity).upper()
    if value not in SEVERITIES:
        raise ValueError(f"severity {severity!r} must be one of {sorted(SEVERITIES)}")
    return value  # type: ignore[return-value]


def generic_event(
    index: int,
    name: str,
    data: Mapping[str, Any] | None,
    severity: Severity,
    *,
    event_id: str | None = None,
    timestamp: float | None = None,
) -> GenericEvent:
    """A ``GENERIC_EVENT``; ``event_id`` and ``timestamp`` (epoch seconds) default to new."""
    return GenericEvent(
        event_id=event_id or new_event_id(),
        event_session_index=index,
        severity=severity,
        timestamp=_now() if timestamp is None else datetime.fromtimestamp(timestamp, UTC),
        event_name=name,
        event_data=json_safe(data),
    )


class ForwardedEvent(NamedTuple):
    """A forwarded event as queued: the ``GENERIC_EVENT`` is built when its batch is sent,
    off the emitting thread (its id, index and time are fixed when it is queued)."""

    session_index: int
    event_id: str
    name: str
    data: dict[str, Any]
    severity: Severity
    timestamp: float


def materialize(item: TelemetryEvent | ForwardedEvent) -> TelemetryEvent:
    """The wire event of a queued item."""
    if isinstance(item, ForwardedEvent):
        return generic_event(
            item.session_index,
            item.name,
            item.data,
            item.severity,
            event_id=item.event_id,
            timestamp=item.timestamp,
        )
    return item


def session_start_event(index: int, started: datetime) -> SessionStartEvent:
    return SessionStartEvent(
        event_id=new_event_id(), event_session_index=index, severity="INFO", timestamp=started
    )


def session_end_event(index: int, started: datetime) -> SessionEndEvent:
    end = _now()
    return SessionEndEvent(
        event_id=new_event_id(),
        event_session_index=index,
        severity="INFO",
        timestamp=end,
        duration=str(end - started),
    )


def exception_event(index: int, exc: BaseException, severity: Severity) -> TelemetryEvent:
    """A ``user_error`` GENERIC_EVENT (WARNING) for a user error (see :func:`is_user_error`),
    else an UNHANDLED_EXCEPTION with the traceback, as the official SDK sends them."""
    user = _user_error(exc)
    if user is not None:
        data: dict[str, Any] = {"error_type": type(exc).__name__}
        if message := str(exc):
            data["message"] = message
        status = getattr(user, "status_code", None)
        if isinstance(status, int):
            data["status_code"] = status
        if body := getattr(user, "body", None):
            data["body"] = body
        return generic_event(index, "user_error", data, "WARNING")
    tb = (
        "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        if exc.__traceback__ is not None
        else None
    )
    return UnhandledExceptionEvent(
        event_id=new_event_id(),
        event_session_index=index,
        severity=severity,
        timestamp=_now(),
        error_type=type(exc).__name__,
        error_message=str(exc)[:_MAX_TRACEBACK_CHARS],
        traceback=tb[-_MAX_TRACEBACK_CHARS:] if tb is not None else None,
    )


def is_user_error(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception in its ``__cause__``/``__context__`` chain) is the
    user's fault: a :class:`~tinkjax.errors.RequestFailedError` of category ``user``, or an
    HTTP status in 400-499 other than 408."""
    return _user_error(exc) is not None


def _user_error(exc: BaseException) -> BaseException | None:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if (
            isinstance(current, RequestFailedError)
            and current.category is RequestErrorCategory.USER
        ):
            return current
        status = getattr(current, "status_code", None)
        if isinstance(status, int) and 400 <= status < 500 and status != 408:
            return current
        current = current.__cause__ or current.__context__
    return None
