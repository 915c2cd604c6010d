"""A small event API that every layer of tinkjax emits through.

Handlers are attached under an id to one or more event names and are called synchronously with
``(event_name, measurements, metadata)``. A handler that raises is logged and skipped: it never
breaks the code that emitted the event.

Event names are tuples of strings (``("tinkjax", "request", "stop")``); the dotted string
``"tinkjax.request.stop"`` names the same event everywhere a name is accepted. Handlers always
receive the tuple form.

Events emitted by the client:

============================================  =================================  =================
event                                         measurements                       metadata
============================================  =================================  =================
``tinkjax.request.start``                     ``system_time``                    ``method``,
                                                                                 ``path``,
                                                                                 ``retry_count``,
                                                                                 ids, telemetry
``tinkjax.request.stop``                      ``duration_s``                     + ``status``
``tinkjax.request.exception``                 ``duration_s``                     + ``error_type``,
                                                                                 ``error``
``tinkjax.future.queue_state``                ``iteration``, ``waited_s``        ``request_id``,
                                              (since polling began)              ``queue_state``,
                                                                                 ``reason``, ids
``tinkjax.ratelimit.window``                  ``delay_s``                        ``base_url``
``tinkjax.session.heartbeat_failed``          ``since_success_s``                ``session_id``
============================================  =================================  =================

Events emitted by ``TrainingClient.forward_backward_custom`` (the engine), all with
``model_id`` in their metadata:

============================================  =================================  =================
event                                         measurements                       metadata
============================================  =================================  =================
``tinkjax.custom_loss.start``                 ``system_time``                    ``regularizer_count``,
                                                                                 ``track_grad_norms``
``tinkjax.regularizer.compute``               ``value``, ``contribution``,       ``regularizer_name``,
                                              ``grad_norm`` (when tracked)       ``weight``
``tinkjax.custom_loss.stop``                  ``duration``, ``loss_total``,      ``regularizer_count``
                                              ``regularizer_total``
``tinkjax.custom_loss.exception``             ``duration``                       ``reason``, ``message``,
                                                                                 ``term``/``datum``/``name``
                                                                                 when known
============================================  =================================  =================

``tinkjax.retry.{start,attempt,stop,failed}`` come from :func:`tinkjax.client.with_retry`
(see :mod:`tinkjax.client._telemetry_retry`).

"ids" are ``session_id``, ``model_id`` and ``sampling_session_id`` (``None`` when not
applicable); "telemetry" is ``telemetry_metadata``, the dict set by :func:`telemetry_metadata`
around the call that made the request.

Example::

    from tinkjax import events

    def on_stop(name, measurements, metadata):
        print(metadata["path"], metadata["status"], measurements["duration_s"])

    events.attach("my-logger", "tinkjax.request.stop", on_stop)
    ...
    events.detach("my-logger")

:func:`attach_logger` does this for you through the standard :mod:`logging` module::

    handler_id = events.attach_logger(level=logging.INFO)
    ...
    events.detach(handler_id)
"""

from __future__ import annotations

import contextlib
import contextvars
import itertools
import logging
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

__all__ = [
    "LOGGED_EVENTS",
    "EventName",
    "Handler",
    "attach",
    "attach_logger",
    "current_telemetry_metadata",
    "detach",
    "emit",
    "handlers",
    "normalize_event_name",
    "telemetry_metadata",
]

logger = logging.getLogger(__name__)

EventName = tuple[str, ...]
Handler = Callable[[EventName, Mapping[str, Any], Mapping[str, Any]], None]

_lock = threading.Lock()
# handler id -> (event names, fn); rebuilt copy-on-write so emit never holds the lock.
_handlers: dict[str, tuple[frozenset[EventName], Handler]] = {}
_by_event: dict[EventName, tuple[tuple[str, Handler], ...]] = {}

_telemetry_metadata: contextvars.ContextVar[Mapping[str, Any] | None] = contextvars.ContextVar(
    "tinkjax_telemetry_metadata", default=None
)


def normalize_event_name(name: EventName | Sequence[str] | str) -> EventName:
    """``"a.b.c"`` or ``("a", "b", "c")`` → ``("a", "b", "c")``.

    Raises:
        ValueError: the name is empty or has an empty part.
    """
    parts = tuple(name.split(".")) if isinstance(name, str) else tuple(name)
    if not parts or not all(isinstance(p, str) and p for p in parts):
        raise ValueError(f"event name {name!r} must be a dotted string or a tuple of non-empty str")
    return parts


def _names(event_names: EventName | str | Sequence[EventName | str]) -> frozenset[EventName]:
    if isinstance(event_names, str):
        return frozenset({normalize_event_name(event_names)})
    if isinstance(event_names, tuple) and all(isinstance(p, str) for p in event_names):
        return frozenset({normalize_event_name(event_names)})  # one tuple name
    return frozenset(normalize_event_name(n) for n in event_names)


def _rebuild() -> None:
    index: dict[EventName, list[tuple[str, Handler]]] = {}
    for hid, (names, fn) in _handlers.items():
        for n in names:
            index.setdefault(n, []).append((hid, fn))
    global _by_event
    _by_event = {k: tuple(v) for k, v in index.items()}


def attach(
    handler_id: str, event_names: EventName | str | Sequence[EventName | str], fn: Handler
) -> None:
    """Call ``fn(event_name, measurements, metadata)`` whenever one of ``event_names`` is emitted.

    Args:
        handler_id: a unique id, used to :func:`detach` the handler.
        event_names: one name (tuple or dotted string) or a list of names.
        fn: the handler; exceptions it raises are logged and ignored.

    Raises:
        ValueError: ``handler_id`` is already attached, or a name is malformed.
    """
    names = _names(event_names)
    with _lock:
        if handler_id in _handlers:
            raise ValueError(f"handler_id {handler_id!r} is already attached")
        _handlers[handler_id] = (names, fn)
        _rebuild()


def detach(handler_id: str) -> bool:
    """Remove a handler. Returns whether one was attached under ``handler_id``."""
    with _lock:
        found = _handlers.pop(handler_id, None) is not None
        if found:
            _rebuild()
    return found


def handlers() -> dict[str, frozenset[EventName]]:
    """The attached handler ids and the event names each listens to."""
    with _lock:
        return {hid: names for hid, (names, _) in _handlers.items()}


def emit(
    event_name: EventName | str,
    measurements: Mapping[str, Any],
    metadata: Mapping[str, Any],
) -> None:
    """Call every handler attached to ``event_name``; never raises because of a handler."""
    name = normalize_event_name(event_name)
    targets = _by_event.get(name)
    if not targets:
        return
    for hid, fn in targets:
        try:
            fn(name, measurements, metadata)
        except Exception:
            logger.exception("event handler %r failed on %s", hid, ".".join(name))


@contextlib.contextmanager
def telemetry_metadata(**values: Any) -> Iterator[Mapping[str, Any]]:
    """Attach ``values`` to the request events of every call made inside the block.

    Nested blocks merge, the inner values winning. The metadata travels with the call (it is
    captured when the call is made), so it also tags requests that run later on the client's
    background loop.
    """
    merged = {**(_telemetry_metadata.get() or {}), **values}
    token = _telemetry_metadata.set(merged)
    try:
        yield merged
    finally:
        _telemetry_metadata.reset(token)


def current_telemetry_metadata() -> Mapping[str, Any]:
    """The per-call telemetry metadata in effect (empty when none)."""
    return _telemetry_metadata.get() or {}


#: The events :func:`attach_logger` logs by default.
LOGGED_EVENTS: tuple[str, ...] = (
    "tinkjax.request.stop",
    "tinkjax.request.exception",
    "tinkjax.future.queue_state",
    "tinkjax.ratelimit.window",
    "tinkjax.session.heartbeat_failed",
    "tinkjax.custom_loss.start",
    "tinkjax.custom_loss.stop",
    "tinkjax.custom_loss.exception",
    "tinkjax.regularizer.compute",
    "tinkjax.retry.attempt",
    "tinkjax.retry.failed",
)
_WARNING_EVENTS = frozenset(
    {
        ("tinkjax", "request", "exception"),
        ("tinkjax", "custom_loss", "exception"),
        ("tinkjax", "session", "heartbeat_failed"),
        ("tinkjax", "retry", "failed"),
    }
)
_logger_ids = itertools.count()


def _describe(name: EventName, measurements: Mapping[str, Any], metadata: Mapping[str, Any]) -> str:
    kind = name[1:]
    if kind == ("request", "stop"):
        return (
            f"{metadata.get('method')} {metadata.get('path')} -> {metadata.get('status')} in "
            f"{measurements.get('duration_s', 0.0) * 1e3:.1f} ms"
            f" (retry {metadata.get('retry_count', 0)})"
        )
    if kind == ("request", "exception"):
        return (
            f"{metadata.get('method')} {metadata.get('path')} failed after "
            f"{measurements.get('duration_s', 0.0) * 1e3:.1f} ms: {metadata.get('error_type')}: "
            f"{metadata.get('error')}"
        )
    if kind == ("future", "queue_state"):
        reason = f" ({metadata['reason']})" if metadata.get("reason") else ""
        return f"request {metadata.get('request_id')} queue state {metadata.get('queue_state')}{reason}"
    if kind == ("regularizer", "compute"):
        parts = ", ".join(f"{k}={v:.6g}" for k, v in measurements.items() if isinstance(v, float))
        return f"regularizer {metadata.get('regularizer_name')} (weight {metadata.get('weight')}): {parts}"
    values = ", ".join(f"{k}={v}" for k, v in {**measurements, **metadata}.items())
    return values


def attach_logger(
    level: int | str = logging.INFO,
    *,
    logger: logging.Logger | str = "tinkjax.events",
    event_names: Sequence[EventName | str] = LOGGED_EVENTS,
    handler_id: str | None = None,
) -> str:
    """Log request, queue, rate-limit, custom-loss, regularizer and retry events through
    :mod:`logging` (failures at ``WARNING`` or above, the rest at ``level``).

    Args:
        level: a :mod:`logging` level (``logging.DEBUG``, ``"INFO"``...).
        logger: the logger (or its name) the lines go to.
        event_names: the events to log (default :data:`LOGGED_EVENTS`).
        handler_id: the id to attach under (default: a new ``tinkjax.logger.N``).

    Returns:
        The handler id; :func:`detach` it to stop logging.

    Raises:
        ValueError: an unknown level name, or ``handler_id`` is already attached.
    """
    if isinstance(level, str):
        resolved = logging.getLevelName(level.upper())
        if not isinstance(resolved, int):
            raise ValueError(f"level {level!r} is not a logging level name")
        level = resolved
    target = logging.getLogger(logger) if isinstance(logger, str) else logger
    failure_level = max(level, logging.WARNING)
    hid = handler_id if handler_id is not None else f"tinkjax.logger.{next(_logger_ids)}"

    def log(name: EventName, measurements: Mapping[str, Any], metadata: Mapping[str, Any]) -> None:
        at = failure_level if name in _WARNING_EVENTS else level
        if target.isEnabledFor(at):
            target.log(at, "%s: %s", ".".join(name), _describe(name, measurements, metadata))

    attach(hid, list(event_names), log)
    return hid
