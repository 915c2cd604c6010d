"""A latency histogram with exact count, sum, min and max, and percentiles from a bounded
uniform reservoir.

Estimator: Vitter's Algorithm R keeps a uniform random sample of at most ``capacity`` of all
the values observed since the last reset (each value is in it with probability
``capacity / count``). Percentiles are NumPy's ``numpy.percentile`` (linear interpolation
between closest ranks) of that sample, so they are exact while ``count <= capacity`` and,
beyond it, unbiased estimates whose rank has a standard error of ``sqrt(p (1 - p) /
capacity)``: 0.8 percentile points for the median and 0.16 for p99 at the default 4,096.
Memory is ``O(capacity)`` whatever the number of observations; observing is O(1).
"""

from __future__ import annotations

import math
import random
import threading

import msgspec
import numpy as np

__all__ = ["DEFAULT_CAPACITY", "Histogram", "HistogramSummary"]

#: Reservoir size of a histogram (values kept for percentiles).
DEFAULT_CAPACITY = 4096


class HistogramSummary(msgspec.Struct, frozen=True, kw_only=True):
    """One histogram at one moment.

    Attributes:
        count: values observed. sum, mean, min, max: over all of them (exact).
        p50, p95, p99: percentiles of the reservoir (exact while ``count <= capacity``).
    """

    count: int
    sum: float
    mean: float
    min: float
    max: float
    p50: float
    p95: float
    p99: float


class Histogram:
    """Observed values: exact aggregates plus a reservoir for percentiles (thread-safe).

    Args:
        capacity: the most values kept for percentiles.
        seed: seeds the reservoir's random replacement (deterministic tests).
    """

    def __init__(self, capacity: int = DEFAULT_CAPACITY, *, seed: int | None = None) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._values: list[float] = []
        self.count = 0
        self.sum = 0.0
        self.min = math.inf
        self.max = -math.inf

    def observe(self, value: float) -> None:
        """Record one value (non-finite values are ignored: they have no percentile)."""
        v = float(value)
        if not math.isfinite(v):
            return
        with self._lock:
            self.count += 1
            self.sum += v
            if v < self.min:
                self.min = v
            if v > self.max:
                self.max = v
            if len(self._values) < self.capacity:
                self._values.append(v)
            else:
                j = self._rng.randrange(self.count)
                if j < self.capacity:
                    self._values[j] = v

    def values(self) -> list[float]:
        """A copy of the reservoir."""
        with self._lock:
            return list(self._values)

    def summary(self) -> HistogramSummary | None:
        """Aggregates and percentiles now, or ``None`` before the first value."""
        with self._lock:
            if self.count == 0:
                return None
            values = np.asarray(self._values, dtype=np.float64)
            count, total, lo, hi = self.count, self.sum, self.min, self.max
        p50, p95, p99 = np.percentile(values, [50.0, 95.0, 99.0])
        return HistogramSummary(
            count=count,
            sum=total,
            mean=total / count,
            min=lo,
            max=hi,
            p50=float(p50),
            p95=float(p95),
            p99=float(p99),
        )
