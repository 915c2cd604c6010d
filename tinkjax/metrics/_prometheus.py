"""Prometheus exposition of a :class:`~._registry.Registry` through ``prometheus_client``
(the ``prometheus`` extra): counters as counters, gauges as gauges, histograms as summaries
(``quantile`` 0.5/0.95/0.99 samples plus ``_count`` and ``_sum``; the quantiles are the
registry's own estimates, see :mod:`._histogram`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ._registry import Registry

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

__all__ = ["PrometheusCollector", "prometheus_text"]

_QUANTILES = (("0.5", "p50"), ("0.95", "p95"), ("0.99", "p99"))


def _require() -> Any:
    try:
        import prometheus_client
    except ImportError as exc:
        raise ImportError(
            "the Prometheus exporter needs prometheus_client: pip install 'tinkjax[prometheus]'"
        ) from exc
    return prometheus_client


class PrometheusCollector:
    """A ``prometheus_client`` collector reading ``registry`` at each scrape.

    Register it where your process serves metrics::

        import prometheus_client
        prometheus_client.REGISTRY.register(PrometheusCollector(tinkjax.metrics.REGISTRY))
        prometheus_client.start_http_server(9100)
    """

    def __init__(self, registry: Registry) -> None:
        _require()
        self.registry = registry

    def describe(self) -> list[Metric]:
        return []  # metric names appear at run time: prometheus_client then calls collect()

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
        from prometheus_client.metrics_core import Metric

        snap = self.registry.snapshot()
        docs = self.registry.descriptions
        for name, family in sorted(snap.counters.items()):
            base = name[: -len("_total")] if name.endswith("_total") else name
            keys = sorted({k for labels in family for k, _ in labels})
            counter = CounterMetricFamily(base, docs.get(name, name), labels=keys)
            for labels, value in sorted(family.items()):
                have = dict(labels)
                counter.add_metric([have.get(k, "") for k in keys], value)
            yield counter
        for name, gfamily in sorted(snap.gauges.items()):
            keys = sorted({k for labels in gfamily for k, _ in labels})
            gauge = GaugeMetricFamily(name, docs.get(name, name), labels=keys)
            for labels, value in sorted(gfamily.items()):
                have = dict(labels)
                gauge.add_metric([have.get(k, "") for k in keys], value)
            yield gauge
        for name, hfamily in sorted(snap.histograms.items()):
            summary = Metric(name, docs.get(name, name), "summary")
            for labels, h in sorted(hfamily.items()):
                series = dict(labels)
                for q, field in _QUANTILES:
                    summary.add_sample(name, {**series, "quantile": q}, getattr(h, field))
                summary.add_sample(f"{name}_count", series, float(h.count))
                summary.add_sample(f"{name}_sum", series, h.sum)
            yield summary


def prometheus_text(registry: Registry) -> str:
    """``registry`` in the Prometheus text exposition format."""
    prometheus_client = _require()
    target = prometheus_client.CollectorRegistry(auto_describe=False)
    target.register(PrometheusCollector(registry))
    return prometheus_client.generate_latest(target).decode()  # type: ignore[no-any-return]
