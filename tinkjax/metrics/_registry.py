"""``Registry``: named counters, gauges and histograms, each a family of label sets, and the
``Snapshot`` of all of them at one moment."""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator, Mapping
from typing import Any

from ._histogram import DEFAULT_CAPACITY, Histogram, HistogramSummary

__all__ = ["Labels", "Registry", "Snapshot", "labels_of"]

#: A label set, sorted by name: ``(("path", "/api/v1/asample"), ("status", "200"))``.
Labels = tuple[tuple[str, str], ...]


def labels_of(labels: Mapping[str, object]) -> Labels:
    return tuple(sorted((str(k), str(v)) for k, v in labels.items()))


def _matches(series: Labels, wanted: Labels) -> bool:
    have = dict(series)
    return all(have.get(k) == v for k, v in wanted)


class Snapshot:
    """Every metric at one moment (see :meth:`Registry.snapshot`).

    Attributes:
        counters: ``{name: {labels: value}}``.
        gauges: ``{name: {labels: value}}``.
        histograms: ``{name: {labels: HistogramSummary}}``.
    """

    def __init__(
        self,
        counters: dict[str, dict[Labels, float]],
        gauges: dict[str, dict[Labels, float]],
        histograms: dict[str, dict[Labels, HistogramSummary]],
    ) -> None:
        self.counters = counters
        self.gauges = gauges
        self.histograms = histograms

    def __repr__(self) -> str:
        return (
            f"Snapshot({len(self.counters)} counters, {len(self.gauges)} gauges, "
            f"{len(self.histograms)} histograms)"
        )

    def counter(self, name: str, **labels: object) -> float:
        """The sum of ``name`` over the label sets that have ``labels`` (0 when none)."""
        wanted = labels_of(labels)
        return sum(v for k, v in self.counters.get(name, {}).items() if _matches(k, wanted))

    def gauge(self, name: str, **labels: object) -> float | None:
        """The gauge with exactly ``labels``, or ``None``."""
        return self.gauges.get(name, {}).get(labels_of(labels))

    def histogram(self, name: str, **labels: object) -> HistogramSummary | None:
        """The histogram with exactly ``labels``, or ``None``."""
        return self.histograms.get(name, {}).get(labels_of(labels))

    def to_dict(self) -> dict[str, Any]:
        """JSON builtins: ``{"counters": {name: [{"labels": {...}, "value": v}]}, "gauges":
        ..., "histograms": {name: [{"labels": {...}, "count": ..., "p50": ...}]}}``."""

        def rows(family: Mapping[Labels, Any], value: Any) -> list[dict[str, Any]]:
            return [{"labels": dict(k), **value(v)} for k, v in sorted(family.items())]

        return {
            "counters": {n: rows(f, lambda v: {"value": v}) for n, f in self.counters.items()},
            "gauges": {n: rows(f, lambda v: {"value": v}) for n, f in self.gauges.items()},
            "histograms": {
                n: rows(
                    f,
                    lambda v: {k: getattr(v, k) for k in HistogramSummary.__struct_fields__},
                )
                for n, f in self.histograms.items()
            },
        }


class Registry:
    """Counters, gauges and histograms by name and labels (thread-safe).

    Args:
        histogram_capacity: reservoir size of each histogram (see :mod:`._histogram`).
        max_series: the most label sets per metric name; values for more are dropped and
            counted in :attr:`dropped_series` (a label with unbounded values cannot grow
            memory without bound).
    """

    def __init__(
        self, *, histogram_capacity: int = DEFAULT_CAPACITY, max_series: int = 1000
    ) -> None:
        self.histogram_capacity = histogram_capacity
        self.max_series = max_series
        self.dropped_series = 0
        self._lock = threading.Lock()
        self._counters: dict[str, dict[Labels, float]] = {}
        self._gauges: dict[str, dict[Labels, float]] = {}
        self._histograms: dict[str, dict[Labels, Histogram]] = {}
        self.descriptions: dict[str, str] = {}

    def describe(self, name: str, text: str) -> None:
        """The help text exporters give ``name``."""
        self.descriptions[name] = text

    def _full(self, family: Mapping[Labels, Any], key: Labels) -> bool:
        if key in family or len(family) < self.max_series:
            return False
        self.dropped_series += 1
        return True

    def increment(self, name: str, value: float = 1.0, **labels: object) -> None:
        """Add ``value`` (>= 0, finite) to the counter ``name`` with ``labels``."""
        self.increment_key(name, labels_of(labels), value)

    def increment_key(self, name: str, key: Labels, value: float = 1.0) -> None:
        """:meth:`increment` with the labels already a sorted :data:`Labels` tuple (the
        collector's fast path: it builds each key once)."""
        v = float(value)
        if not (math.isfinite(v) and v >= 0):
            raise ValueError(f"counter {name}: increment must be finite and >= 0, got {value!r}")
        with self._lock:
            family = self._counters.setdefault(name, {})
            if not self._full(family, key):
                family[key] = family.get(key, 0.0) + v

    def set_gauge(self, name: str, value: float, **labels: object) -> None:
        """Set the gauge ``name`` with ``labels`` to ``value`` (finite)."""
        v = float(value)
        if not math.isfinite(v):
            raise ValueError(f"gauge {name}: value must be finite, got {value!r}")
        key = labels_of(labels)
        with self._lock:
            family = self._gauges.setdefault(name, {})
            if not self._full(family, key):
                family[key] = v

    def observe(self, name: str, value: float, **labels: object) -> None:
        """Record ``value`` in the histogram ``name`` with ``labels``."""
        self.observe_key(name, labels_of(labels), value)

    def observe_key(self, name: str, key: Labels, value: float) -> None:
        """:meth:`observe` with the labels already a sorted :data:`Labels` tuple."""
        with self._lock:
            family = self._histograms.setdefault(name, {})
            hist = family.get(key)
            if hist is None:
                if self._full(family, key):
                    return
                hist = family[key] = Histogram(self.histogram_capacity)
        hist.observe(value)

    def histogram_values(self, name: str, **labels: object) -> list[float]:
        """The reservoir of one histogram (empty when it does not exist)."""
        with self._lock:
            hist = self._histograms.get(name, {}).get(labels_of(labels))
        return hist.values() if hist is not None else []

    def snapshot(self) -> Snapshot:
        """Every metric now (copies: later updates do not change it)."""
        with self._lock:
            counters = {n: dict(f) for n, f in self._counters.items()}
            gauges = {n: dict(f) for n, f in self._gauges.items()}
            hists = {n: dict(f) for n, f in self._histograms.items()}
        summaries: dict[str, dict[Labels, HistogramSummary]] = {}
        for name, family in hists.items():
            for key, hist in family.items():
                summary = hist.summary()
                if summary is not None:
                    summaries.setdefault(name, {})[key] = summary
        return Snapshot(counters, gauges, summaries)

    def reset(self) -> None:
        """Forget every value (descriptions stay)."""
        with self._lock:
            self._counters.clear()
            self._gauges.clear()
            self._histograms.clear()
            self.dropped_series = 0

    def names(self) -> Iterator[tuple[str, str]]:
        """``(kind, name)`` of every metric with a value: kind is counter, gauge or histogram."""
        with self._lock:
            found = (
                [("counter", n) for n in self._counters]
                + [("gauge", n) for n in self._gauges]
                + [("histogram", n) for n in self._histograms]
            )
        return iter(found)
