"""The one backoff utility used by every retry in tinkjax (transport, futures, sampling,
rate-limit windows, heartbeats): exponential growth, a cap, and multiplicative jitter."""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Mapping

__all__ = ["Backoff", "backoff_delay", "retry_after_seconds"]


def backoff_delay(
    attempt: int,
    *,
    base: float = 0.5,
    cap: float = 10.0,
    jitter: float = 0.25,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait before retry number ``attempt`` (0-based).

    ``min(base * 2**attempt, cap)`` scaled by a factor drawn uniformly from ``[1 - jitter, 1]``,
    so concurrent clients spread out and the cap is never exceeded.
    """
    if attempt < 0:
        raise ValueError(f"attempt must be >= 0, got {attempt}")
    raw = min(base * (2.0 ** min(attempt, 62)), cap)
    r = (rng or random).random()
    return raw * (1.0 - jitter * r)


class Backoff:
    """A retry schedule: :meth:`next` returns successive :func:`backoff_delay` values.

    Attributes:
        attempt: how many delays were handed out since the last :meth:`reset`.
    """

    def __init__(self, *, base: float = 0.5, cap: float = 10.0, jitter: float = 0.25) -> None:
        self.base = base
        self.cap = cap
        self.jitter = jitter
        self.attempt = 0

    def next(self, hint: float | None = None) -> float:
        """The next delay; a server hint (``retry-after``) in ``(0, 60]`` s takes precedence."""
        delay = backoff_delay(self.attempt, base=self.base, cap=self.cap, jitter=self.jitter)
        self.attempt += 1
        if hint is not None and 0 < hint <= 60:
            return hint
        return delay

    def reset(self) -> None:
        self.attempt = 0


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """The server's requested delay from ``retry-after-ms`` or ``retry-after`` (seconds or an
    HTTP date), or ``None`` when absent, unparsable, or outside ``(0, 60]`` s."""
    value: float | None = None
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            value = float(ms) / 1000.0
        except ValueError:
            value = None
    if value is None:
        raw = headers.get("retry-after")
        if raw is not None:
            try:
                value = float(raw)
            except ValueError:
                try:
                    value = email.utils.parsedate_to_datetime(raw).timestamp() - time.time()
                except (TypeError, ValueError, IndexError):
                    value = None
    if value is None or not 0 < value <= 60:
        return None
    return value
