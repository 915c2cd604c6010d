"""OpenTelemetry metrics from a :class:`~._registry.Registry` through the OpenTelemetry API
(the ``otel`` extra): asynchronous instruments whose callbacks read the registry at each
collection, so the SDK and exporter of your choice (OTLP, Prometheus, console...) see them.

Counters become ``ObservableCounter``\\ s, gauges ``ObservableGauge``\\ s; a histogram ``name``
(whose percentiles the registry estimates, see :mod:`._histogram`) becomes an
``ObservableGauge`` ``name`` with a ``quantile`` attribute (``0.5``, ``0.95``, ``0.99``) and
``ObservableCounter``\\ s ``name_count`` and ``name_sum``. Labels are attributes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from ._collector import KINDS
from ._registry import Registry, Snapshot

__all__ = ["OpenTelemetryExporter"]

_QUANTILES = ((0.5, "p50"), (0.95, "p95"), (0.99, "p99"))


def _require() -> Any:
    try:
        from opentelemetry import metrics
    except ImportError as exc:
        raise ImportError(
            "the OpenTelemetry exporter needs opentelemetry-api: pip install 'tinkjax[otel]'"
        ) from exc
    return metrics


class OpenTelemetryExporter:
    """Instruments on ``meter`` for the metrics of ``registry``.

    Args:
        registry: the metrics to export.
        meter: an OpenTelemetry ``Meter`` (default: ``metrics.get_meter("tinkjax")`` of the
            global meter provider).

    The default metrics (:data:`~._collector.KINDS`) and those in the registry when it is made
    get instruments; call :meth:`refresh` after adding metrics of your own.
    """

    def __init__(self, registry: Registry, meter: Any = None) -> None:
        otel = _require()
        self.registry = registry
        self.meter = meter if meter is not None else otel.get_meter("tinkjax")
        self._instrumented: set[str] = set()
        self.refresh()

    def refresh(self) -> None:
        """Create instruments for metrics that have none yet."""
        kinds = dict(KINDS)
        kinds.update({name: kind for kind, name in self.registry.names()})
        for name, kind in sorted(kinds.items()):
            if name in self._instrumented:
                continue
            self._instrumented.add(name)
            doc = self.registry.descriptions.get(name, name)
            if kind == "counter":
                self.meter.create_observable_counter(
                    name, callbacks=[self._counter(name)], description=doc
                )
            elif kind == "gauge":
                self.meter.create_observable_gauge(
                    name, callbacks=[self._gauge(name)], description=doc
                )
            else:
                self.meter.create_observable_gauge(
                    name, callbacks=[self._quantiles(name)], description=doc, unit="s"
                )
                for part in ("count", "sum"):
                    self.meter.create_observable_counter(
                        f"{name}_{part}", callbacks=[self._part(name, part)], description=doc
                    )

    def _snap(self) -> Snapshot:
        return self.registry.snapshot()

    def _counter(self, name: str) -> Callable[[Any], Iterable[Any]]:
        from opentelemetry.metrics import Observation

        def callback(_options: Any) -> Iterable[Any]:
            family = self._snap().counters.get(name, {})
            return [Observation(v, dict(k)) for k, v in family.items()]

        return callback

    def _gauge(self, name: str) -> Callable[[Any], Iterable[Any]]:
        from opentelemetry.metrics import Observation

        def callback(_options: Any) -> Iterable[Any]:
            family = self._snap().gauges.get(name, {})
            return [Observation(v, dict(k)) for k, v in family.items()]

        return callback

    def _quantiles(self, name: str) -> Callable[[Any], Iterable[Any]]:
        from opentelemetry.metrics import Observation

        def callback(_options: Any) -> Iterable[Any]:
            family = self._snap().histograms.get(name, {})
            return [
                Observation(getattr(h, field), {**dict(k), "quantile": q})
                for k, h in family.items()
                for q, field in _QUANTILES
            ]

        return callback

    def _part(self, name: str, part: str) -> Callable[[Any], Iterable[Any]]:
        from opentelemetry.metrics import Observation

        def callback(_options: Any) -> Iterable[Any]:
            family = self._snap().histograms.get(name, {})
            return [Observation(getattr(h, part), dict(k)) for k, h in family.items()]

        return callback
