"""In-process metrics fed by :mod:`tinkjax.events`: counters, gauges, latency histograms with
p50/p95/p99, a :func:`snapshot`, exporters to Prometheus and OpenTelemetry.

Importing this package attaches :data:`COLLECTOR` (the default metrics, listed in
:mod:`tinkjax.metrics._collector`) to the event API; :func:`detach` stops it. Example::

    from tinkjax import metrics

    ...  # train, sample
    snap = metrics.snapshot()
    print(snap.counter("tinkjax_requests_total", status=200))
    print(snap.histogram("tinkjax_request_duration_seconds", method="POST",
                         path="/api/v1/forward_backward"))
    print(metrics.prometheus_text(metrics.REGISTRY))
"""

from ._collector import KINDS, Collector, normalize_path
from ._histogram import DEFAULT_CAPACITY, Histogram, HistogramSummary
from ._otel import OpenTelemetryExporter
from ._prometheus import PrometheusCollector, prometheus_text
from ._registry import Labels, Registry, Snapshot

__all__ = [
    "COLLECTOR",
    "DEFAULT_CAPACITY",
    "KINDS",
    "REGISTRY",
    "Collector",
    "Histogram",
    "HistogramSummary",
    "Labels",
    "OpenTelemetryExporter",
    "PrometheusCollector",
    "Registry",
    "Snapshot",
    "attach",
    "detach",
    "increment",
    "normalize_path",
    "observe",
    "prometheus_text",
    "reset",
    "set_gauge",
    "snapshot",
]

#: The process's default registry.
REGISTRY = Registry()
#: Feeds :data:`REGISTRY` from the event API (attached on import).
COLLECTOR = Collector(REGISTRY)
COLLECTOR.attach()

increment = REGISTRY.increment
set_gauge = REGISTRY.set_gauge
observe = REGISTRY.observe
snapshot = REGISTRY.snapshot
reset = REGISTRY.reset
attach = COLLECTOR.attach
detach = COLLECTOR.detach
