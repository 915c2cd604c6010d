"""What the default metrics are: handlers on :mod:`tinkjax.events` that feed a
:class:`~._registry.Registry`.

=======================================  =========  ==========================================
metric                                   kind       labels, source
=======================================  =========  ==========================================
``tinkjax_requests_total``               counter    ``method``, ``path``, ``status``
                                                    (``request.stop``)
``tinkjax_request_duration_seconds``     histogram  ``method``, ``path`` (``request.stop``)
``tinkjax_request_errors_total``         counter    ``method``, ``path``, ``error_type``
                                                    (``request.exception``: no answer)
``tinkjax_retries_total``                counter    ``source`` (``transport``: a request
                                                    sent again; else the ``RetryHandler``'s
                                                    name), ``path`` for the transport
``tinkjax_retry_failures_total``         counter    ``source``, ``reason`` (``retry.failed``)
``tinkjax_queue_state_changes_total``    counter    ``queue_state`` (``future.queue_state``)
``tinkjax_queue_wait_seconds``           histogram  ``queue_state``: time since polling began,
                                                    at each change of a future's queue state
``tinkjax_ratelimit_delay_seconds``      histogram  (``ratelimit.window``)
``tinkjax_custom_loss_total``            counter    ``outcome`` (``ok``/``error``)
``tinkjax_custom_loss_duration_seconds`` histogram  ``outcome`` (``custom_loss.stop`` and
                                                    ``.exception``)
``tinkjax_custom_loss_value``            gauge      (``loss_total`` of the last step)
``tinkjax_regularizer_value``            gauge      ``regularizer`` (``regularizer.compute``)
``tinkjax_regularizer_contribution``     gauge      ``regularizer``
``tinkjax_regularizer_grad_norm``        gauge      ``regularizer`` (when tracked)
``tinkjax_regularizer_steps_total``      counter    ``regularizer``
``tinkjax_regularizer_step_seconds``     histogram  ``regularizer``: the duration of each
                                                    custom-loss step the regularizer ran in
``tinkjax_heartbeat_failures_total``     counter    (``session.heartbeat_failed``)
=======================================  =========  ==========================================

The regularizers of a step are evaluated together in one compiled program (one
``value_and_grad`` over the stacked terms), so no time of one regularizer alone exists to
measure: ``tinkjax_regularizer_step_seconds`` is the step time each regularizer took part in.

Paths are normalised so ids do not become label values: an absolute URL (a download) is
``"<external>"`` and a path segment that looks like an id (a UUID, ``name:rest``, all digits,
or 24+ characters) is ``"{id}"``.
"""

from __future__ import annotations

import functools
import math
import re
import threading
from collections.abc import Mapping
from typing import Any

from tinkjax import events

from ._registry import Labels, Registry

__all__ = ["KINDS", "Collector", "normalize_path"]

_ID_SEGMENT = re.compile(
    r"^(?:[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
    r"|.*:.*|\d+|.{24,})$"
)

_DESCRIPTIONS = {
    "tinkjax_requests_total": "HTTP requests answered, by method, path and status",
    "tinkjax_request_duration_seconds": "HTTP request latency (one try), seconds",
    "tinkjax_request_errors_total": "HTTP requests that got no answer, by error type",
    "tinkjax_retries_total": "Retries: requests sent again by the transport, with_retry tries",
    "tinkjax_retry_failures_total": "with_retry calls that gave up",
    "tinkjax_queue_state_changes_total": "Queue-state changes of polled futures",
    "tinkjax_queue_wait_seconds": "Time since polling began at each queue-state change, seconds",
    "tinkjax_ratelimit_delay_seconds": "Delays imposed by shared rate-limit windows, seconds",
    "tinkjax_custom_loss_total": "forward_backward_custom steps, by outcome",
    "tinkjax_custom_loss_duration_seconds": "forward_backward_custom step duration, seconds",
    "tinkjax_custom_loss_value": "Total loss of the last custom-loss step",
    "tinkjax_regularizer_value": "Last value of each regularizer",
    "tinkjax_regularizer_contribution": "Last weighted contribution of each regularizer",
    "tinkjax_regularizer_grad_norm": "Last gradient norm of each regularizer (when tracked)",
    "tinkjax_regularizer_steps_total": "Custom-loss steps each regularizer ran in",
    "tinkjax_regularizer_step_seconds": "Duration of the steps each regularizer ran in, seconds",
    "tinkjax_heartbeat_failures_total": "Sessions whose heartbeats kept failing",
}

#: The kind of each default metric (exporters create their instruments from it).
KINDS: dict[str, str] = {
    name: "counter"
    if name.endswith("_total")
    else "histogram"
    if name.endswith("_seconds")
    else "gauge"
    for name in _DESCRIPTIONS
}

_EVENTS = (
    "tinkjax.request.start",
    "tinkjax.request.stop",
    "tinkjax.request.exception",
    "tinkjax.retry.attempt",
    "tinkjax.retry.failed",
    "tinkjax.future.queue_state",
    "tinkjax.ratelimit.window",
    "tinkjax.custom_loss.stop",
    "tinkjax.custom_loss.exception",
    "tinkjax.regularizer.compute",
    "tinkjax.session.heartbeat_failed",
)


@functools.lru_cache(maxsize=4096)
def normalize_path(path: str) -> str:
    """``path`` with id-like segments replaced by ``{id}`` (absolute URLs: ``<external>``)."""
    if path.startswith(("http://", "https://")):
        return "<external>"
    base = path.split("?", 1)[0]
    return "/".join("{id}" if s and _ID_SEGMENT.match(s) else s for s in base.split("/"))


@functools.lru_cache(maxsize=4096)
def _request_keys(method: str, path: str, status: object) -> tuple[Labels, Labels]:
    """``(labels with status, labels without)`` of one kind of request, built once."""
    norm = normalize_path(path)
    return (
        (("method", method), ("path", norm), ("status", str(status))),
        (("method", method), ("path", norm)),
    )


def _finite(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


class Collector:
    """Feeds ``registry`` from the event API while attached.

    Args:
        registry: where the values go.
        handler_id: the id its handler is attached under.
    """

    def __init__(self, registry: Registry, *, handler_id: str = "tinkjax.metrics") -> None:
        self.registry = registry
        self.handler_id = handler_id
        self._lock = threading.Lock()
        # model id -> regularizers seen since that model's last custom_loss.stop/exception
        self._regularizers: dict[Any, set[str]] = {}
        for name, text in _DESCRIPTIONS.items():
            registry.describe(name, text)

    @property
    def attached(self) -> bool:
        return self.handler_id in events.handlers()

    def attach(self) -> None:
        """Start collecting (does nothing when already attached)."""
        if not self.attached:
            events.attach(self.handler_id, list(_EVENTS), self.handle)

    def detach(self) -> None:
        """Stop collecting."""
        events.detach(self.handler_id)

    def handle(
        self, name: events.EventName, measurements: Mapping[str, Any], metadata: Mapping[str, Any]
    ) -> None:
        """The event handler (also usable directly, e.g. to replay events)."""
        r = self.registry
        kind = name[1:]
        if kind == ("request", "start"):
            if metadata.get("retry_count"):  # the first try of a request costs nothing here
                r.increment(
                    "tinkjax_retries_total",
                    source="transport",
                    path=normalize_path(str(metadata.get("path"))),
                )
        elif kind == ("request", "stop"):
            with_status, without = _request_keys(
                str(metadata.get("method")), str(metadata.get("path")), metadata.get("status")
            )
            r.increment_key("tinkjax_requests_total", with_status)
            if (d := _finite(measurements.get("duration_s"))) is not None:
                r.observe_key("tinkjax_request_duration_seconds", without, d)
        elif kind == ("request", "exception"):
            r.increment(
                "tinkjax_request_errors_total",
                method=str(metadata.get("method")),
                path=normalize_path(str(metadata.get("path"))),
                error_type=metadata.get("error_type"),
            )
        elif kind == ("retry", "attempt"):
            r.increment("tinkjax_retries_total", source=metadata.get("name"))
        elif kind == ("retry", "failed"):
            r.increment(
                "tinkjax_retry_failures_total",
                source=metadata.get("name"),
                reason=metadata.get("reason"),
            )
        elif kind == ("future", "queue_state"):
            state = metadata.get("queue_state")
            r.increment("tinkjax_queue_state_changes_total", queue_state=state)
            if (w := _finite(measurements.get("waited_s"))) is not None:
                r.observe("tinkjax_queue_wait_seconds", w, queue_state=state)
        elif kind == ("ratelimit", "window"):
            if (d := _finite(measurements.get("delay_s"))) is not None:
                r.observe("tinkjax_ratelimit_delay_seconds", d)
        elif kind == ("regularizer", "compute"):
            reg = str(metadata.get("regularizer_name"))
            with self._lock:
                self._regularizers.setdefault(metadata.get("model_id"), set()).add(reg)
            for key, metric in (
                ("value", "tinkjax_regularizer_value"),
                ("contribution", "tinkjax_regularizer_contribution"),
                ("grad_norm", "tinkjax_regularizer_grad_norm"),
            ):
                if (v := _finite(measurements.get(key))) is not None:
                    r.set_gauge(metric, v, regularizer=reg)
        elif kind in (("custom_loss", "stop"), ("custom_loss", "exception")):
            outcome = "ok" if kind[1] == "stop" else "error"
            r.increment("tinkjax_custom_loss_total", outcome=outcome)
            duration = _finite(measurements.get("duration"))
            if duration is not None:
                r.observe("tinkjax_custom_loss_duration_seconds", duration, outcome=outcome)
            if (loss := _finite(measurements.get("loss_total"))) is not None:
                r.set_gauge("tinkjax_custom_loss_value", loss)
            with self._lock:
                regs = self._regularizers.pop(metadata.get("model_id"), set())
            for reg in regs:
                r.increment("tinkjax_regularizer_steps_total", regularizer=reg)
                if duration is not None:
                    r.observe("tinkjax_regularizer_step_seconds", duration, regularizer=reg)
        elif kind == ("session", "heartbeat_failed"):
            r.increment("tinkjax_heartbeat_failures_total")
