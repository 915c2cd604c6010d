"""Per-model ``seq_id`` ordering, duplicate detection, and the one worker thread.

Every training request names ``(model_id, seq_id)``. A model's requests run strictly in
``seq_id`` order: one that arrives early waits in a buffer until the gap before it is filled
(the official SDK posts the chunks of one ``forward_backward`` concurrently, chunk 1 last). A
gap that stays open for ``seq_gap_timeout_s`` fails the requests waiting behind it, and the
model's expected ``seq_id`` moves past them, so the model keeps serving.

A resubmission of ``(model_id, seq_id)`` with the same body is answered with the first
submission's ``request_id`` and never runs twice; one with a different body is rejected.

All model work runs on one worker thread (the JAX runtime is not thread-safe). Forward or
forward/backward requests that are ready at the same time and share a base model and
``forward_only`` are fused into one runtime call, without reordering any model's requests.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tinkjax.server._errors import ApiError, category_of, describe
from tinkjax.server._futures import FutureTable

__all__ = ["FusedWork", "Job", "Scheduler"]

_log = logging.getLogger("tinkjax.server")

#: Datums one fused forward/backward call takes at most (the runtime chunks further).
MAX_FUSED_DATUMS = 4096
#: ``(model_id, seq_id)`` submissions remembered for duplicate detection (oldest dropped).
MAX_REMEMBERED_SEQS = 100_000


FusedRunner = Callable[[Sequence["Job"]], list[Any]]
"""Runs fused jobs in one call; returns one result or exception per job."""


@dataclass(frozen=True)
class FusedWork:
    """A forward or forward/backward request that may share a runtime call with others.

    Attributes:
        base_model: jobs fuse only with jobs of the same base model ...
        item: the runtime item (a ``tinkjax.models.FwdBwdItem``; ``Any``: no JAX import here).
        forward_only: ... and the same ``forward_only``.
        runner: runs a batch of such jobs (the same runner for every fused job of a server).
    """

    base_model: str
    item: Any
    forward_only: bool
    runner: FusedRunner

    @property
    def n_datums(self) -> int:
        return len(self.item.datums)


@dataclass
class _Seen:
    digest: str
    request_id: str
    runs: int = 0


@dataclass
class Job:
    """One unit of work for the worker.

    Attributes:
        request_id: the future it completes.
        kind: request kind, for logs and futures.
        run: computes the result (non-fused jobs).
        fused: the forward/backward work (fused jobs).
        model_id: ordering key; ``None`` for unordered jobs (sampling).
        seq_id: position in the model's order.
    """

    request_id: str
    kind: str
    run: Callable[[], Any] | None = None
    fused: FusedWork | None = None
    model_id: str | None = None
    seq_id: int | None = None
    enqueued: float = field(default_factory=time.monotonic)


class Scheduler:
    """Orders, deduplicates and runs jobs on one worker thread.

    Args:
        futures: where results go.
        seq_gap_timeout_s: how long a buffered request waits for a missing ``seq_id``.
    """

    def __init__(self, futures: FutureTable, *, seq_gap_timeout_s: float) -> None:
        self.futures = futures
        self.seq_gap_timeout_s = seq_gap_timeout_s
        self._cond = threading.Condition()
        self._ready: collections.deque[Job] = collections.deque()
        self._next_seq: dict[str, int] = {}
        self._buffer: dict[str, dict[int, Job]] = {}
        # (model_id, seq_id) -> (body digest, request id, times executed); the oldest entries
        # are dropped beyond MAX_REMEMBERED_SEQS, so the execution counts stay bounded too.
        self._seen: dict[tuple[str, int], _Seen] = {}
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.fused_sizes: collections.Counter[int] = collections.Counter()
        """How many fused runtime calls ran each number of jobs (bounded: sizes are at most
        ``MAX_FUSED_DATUMS``)."""

    @property
    def applied(self) -> collections.Counter[tuple[str, int]]:
        """How many times each remembered ``(model_id, seq_id)`` was executed (0 or 1 unless
        something broke)."""
        with self._cond:
            return collections.Counter({key: seen.runs for key, seen in self._seen.items()})

    def applied_count(self, model_id: str, seq_id: int) -> int:
        """How many times ``(model_id, seq_id)`` was executed (0 once it is forgotten)."""
        with self._cond:
            seen = self._seen.get((model_id, seq_id))
            return 0 if seen is None else seen.runs

    # ----------------------------------------------------------------- lifecycle

    def start(self, warmup: Callable[[], None] | None = None) -> None:
        """Start the worker thread (``warmup`` runs on it first, e.g. imports)."""
        self._thread = threading.Thread(
            target=self._loop, args=(warmup,), name="tinkjax-worker", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the worker after the job it is running; pending futures stay pending."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    # ----------------------------------------------------------------- submission

    def known_model(self, model_id: str) -> bool:
        """Whether ``model_id`` has an order (registered and not forgotten)."""
        with self._cond:
            return model_id in self._next_seq

    def next_seq(self, model_id: str) -> int | None:
        """The ``seq_id`` the model expects next."""
        with self._cond:
            return self._next_seq.get(model_id)

    def forget_model(self, model_id: str) -> None:
        """Drop a model's order; its requests still waiting (buffered or ready) fail."""
        with self._cond:
            self._next_seq.pop(model_id, None)
            waiting = list(self._buffer.pop(model_id, {}).values())
            waiting += [job for job in self._ready if job.model_id == model_id]
            self._ready = collections.deque(j for j in self._ready if j.model_id != model_id)
        for job in waiting:
            self.futures.fail(job.request_id, f"model {model_id!r} was unloaded", "user")

    def lookup(self, model_id: str, seq_id: int, digest: str) -> str | None:
        """The request id of an identical earlier submission, ``None`` if there is none.

        Raises:
            ApiError: 400 when ``(model_id, seq_id)`` was submitted with a different body.
        """
        with self._cond:
            return self._lookup(model_id, seq_id, digest)

    def _lookup(self, model_id: str, seq_id: int, digest: str) -> str | None:
        seen = self._seen.get((model_id, seq_id))
        if seen is None:
            return None
        if seen.digest != digest:
            raise ApiError(
                400,
                f"seq_id {seq_id} of model {model_id!r} was already submitted with a different "
                f"body (request {seen.request_id}); seq ids must not be reused",
                field="seq_id",
                request_id=seen.request_id,
            )
        return seen.request_id

    def submit(self, job: Job, *, digest: str = "", register_next_seq: int | None = None) -> str:
        """Queue ``job`` (in order for ordered jobs) and return its request id.

        Args:
            job: the work; for ordered jobs ``model_id`` and ``seq_id`` are set.
            digest: hash of the request body, for duplicate detection.
            register_next_seq: create the model's order (expecting this seq id) if new.

        Returns:
            ``job.request_id``, or the first submission's id for a duplicate.

        Raises:
            ApiError: a reused seq id with another body (400), a seq id the model has already
                passed (400), or an unknown model (404).
        """
        with self._cond:
            if job.model_id is None or job.seq_id is None:
                if job.model_id is not None and job.model_id not in self._next_seq:
                    raise ApiError(404, f"unknown model_id {job.model_id!r}", field="model_id")
                self.futures.create(job.request_id, job.kind)
                self._ready.append(job)
                self._cond.notify_all()
                return job.request_id
            model_id, seq_id = job.model_id, job.seq_id
            existing = self._lookup(model_id, seq_id, digest)
            if existing is not None:
                return existing
            if model_id not in self._next_seq:
                if register_next_seq is None:
                    raise ApiError(404, f"unknown model_id {model_id!r}", field="model_id")
                self._next_seq[model_id] = register_next_seq
            expected = self._next_seq[model_id]
            if seq_id < expected:
                raise ApiError(
                    400,
                    f"seq_id {seq_id} of model {model_id!r} is behind the model's order "
                    f"(next expected seq_id is {expected})",
                    field="seq_id",
                )
            self.futures.create(job.request_id, job.kind)
            self._seen[(model_id, seq_id)] = _Seen(digest, job.request_id)
            if len(self._seen) > MAX_REMEMBERED_SEQS:
                del self._seen[next(iter(self._seen))]
            if seq_id == expected:
                self._ready.append(job)
                self._advance(model_id, seq_id + 1)
            else:
                self._buffer.setdefault(model_id, {})[seq_id] = job
            self._cond.notify_all()
            return job.request_id

    def _advance(self, model_id: str, next_seq: int) -> None:
        buffer = self._buffer.get(model_id, {})
        while next_seq in buffer:
            self._ready.append(buffer.pop(next_seq))
            next_seq += 1
        if not buffer:
            self._buffer.pop(model_id, None)
        self._next_seq[model_id] = next_seq

    def _expire_gaps(self) -> list[tuple[Job, str]]:
        """Fail buffered requests whose gap outlived the timeout (caller holds the lock)."""
        expired: list[tuple[Job, str]] = []
        now = time.monotonic()
        for model_id in list(self._buffer):
            buffer = self._buffer[model_id]
            oldest = min(job.enqueued for job in buffer.values())
            if now - oldest < self.seq_gap_timeout_s:
                continue
            expected = self._next_seq.get(model_id, 0)
            message = (
                f"model {model_id!r}: waited {self.seq_gap_timeout_s:g} s for seq_id {expected}, "
                f"which never arrived; the requests queued behind it (seq_ids "
                f"{sorted(buffer)}) were dropped"
            )
            for job in buffer.values():
                expired.append((job, message))
            del self._buffer[model_id]
            self._next_seq[model_id] = max(buffer) + 1
        return expired

    # ----------------------------------------------------------------- worker

    def _take(self) -> list[Job]:
        """The next job, plus compatible fused jobs (caller holds the lock)."""
        first = self._ready.popleft()
        if first.fused is None:
            return [first]
        batch = [first]
        total = first.fused.n_datums
        blocked: set[str] = set()
        keep: collections.deque[Job] = collections.deque()
        while self._ready:
            job = self._ready.popleft()
            fused = job.fused
            compatible = (
                fused is not None
                and job.model_id not in blocked
                and fused.base_model == first.fused.base_model
                and fused.forward_only == first.fused.forward_only
                and total + fused.n_datums <= MAX_FUSED_DATUMS
            )
            if compatible and fused is not None:
                batch.append(job)
                total += fused.n_datums
            else:
                if job.model_id is not None:
                    blocked.add(job.model_id)
                keep.append(job)
        self._ready = keep
        return batch

    def _loop(self, warmup: Callable[[], None] | None) -> None:
        if warmup is not None:
            try:
                warmup()
            except Exception:  # warm-up is an optimisation only
                _log.exception("warm-up failed")
        while True:
            with self._cond:
                expired = self._expire_gaps()
                while not self._ready and not self._stopping and not expired:
                    self._cond.wait(timeout=min(0.5, self.seq_gap_timeout_s / 4) or 0.01)
                    expired = self._expire_gaps()
                if self._stopping:
                    return
                batch = self._take() if self._ready else []
            for job, message in expired:
                self.futures.fail(job.request_id, message, "user")
            if batch:
                self._execute(batch)

    def _execute(self, batch: list[Job]) -> None:
        fused = batch[0].fused
        if fused is not None:
            with self._cond:
                self.fused_sizes[len(batch)] += 1
            try:
                results = fused.runner(batch)
            except Exception as exc:  # not one request's fault: every job of the batch fails
                results = [exc] * len(batch)
        else:
            job = batch[0]
            try:
                assert job.run is not None
                results = [job.run()]
            except Exception as exc:
                results = [exc]
        for job, result in zip(batch, results, strict=True):
            if isinstance(result, Exception):
                category = category_of(result)
                if category == "server":
                    _log.error("request %s (%s) failed", job.request_id, job.kind, exc_info=result)
                self.futures.fail(job.request_id, describe(result), category)
                continue
            if job.model_id is not None and job.seq_id is not None:
                with self._cond:
                    seen = self._seen.get((job.model_id, job.seq_id))
                    if seen is not None:
                        seen.runs += 1
            self.futures.complete(job.request_id, result)
