"""Per-model ``seq_id`` ordering, duplicate detection, and the one worker thread.

Every training request names ``(model_id, seq_id)``. A model's requests run strictly in
``seq_id`` order: one that arrives early waits in a buffer until the gap before it is filled
(the official SDK posts the chunks of one ``forward_backward`` concurrently, chunk 1 last).

* A ``seq_id`` more than ``seq_window`` ahead of the expected one is refused (400): one wild id
  must not park a request that every later one would queue behind, or (once its gap expired)
  move the model's order past every id a client will really send.
* A gap that stays open for ``seq_gap_timeout_s`` (with no progress of the model's order) is
  given up: the order skips only to the lowest waiting ``seq_id``, the run of consecutive
  requests waiting there fails (they may depend on the missing one), and requests waiting
  behind a further gap get a fresh timeout.
* A submission refused at the edge (a 4xx after its ``model_id`` and ``seq_id`` were read) still
  uses its ``seq_id`` (:meth:`Scheduler.refuse`): the official SDK spent the id and never fills
  the gap, so without this the next request would wait out the gap timeout and fail. A later
  submission at that id (the tinkjax client fills a refused id with a no-op) gets a future that
  has already failed with the refusal's message.

A resubmission of ``(model_id, seq_id)`` with the same body is answered with the first
submission's ``request_id`` and never runs twice; one with a different body is rejected.

All model work runs on one worker thread (the JAX runtime is not thread-safe). Forward or
forward/backward requests that are ready at the same time and share a base model and
``forward_only`` are fused into one runtime call, without reordering any model's requests.

Fairness: unordered jobs that name a ``lane`` (sampling: one lane per session) do not queue
behind each other first come, first served. The worker takes turns: one training job (or fused
batch) from the ordered queue, then one job from the next lane in round-robin order, and so on
(a queue with nothing ready gives up its turn). A job may run in pieces: when ``run`` returns
:class:`Resume`, the rest goes to the back of its lane, so one large sample request yields the
worker to other sessions between its pieces.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tinkjax.server._errors import ApiError, category_of, describe
from tinkjax.server._futures import FutureTable

__all__ = ["FusedWork", "Job", "Resume", "Scheduler"]

_log = logging.getLogger("tinkjax.server")

#: Datums one fused forward/backward call takes at most (the runtime chunks further).
MAX_FUSED_DATUMS = 4096
#: ``(model_id, seq_id)`` submissions remembered for duplicate detection (oldest dropped).
MAX_REMEMBERED_SEQS = 100_000
#: How far ahead of a model's expected ``seq_id`` a submission may be (``start(seq_window=)``).
#: Clients post in ``seq_id`` order, so early arrivals are at most their in-flight requests
#: ahead; a 100 000-datum ``forward_backward`` is about 100 chunks.
DEFAULT_SEQ_WINDOW = 4096


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


@dataclass(frozen=True)
class Resume:
    """What an unordered job's ``run`` returns when it did one piece of its work: ``run`` does
    the rest (it may return ``Resume`` again); the job waits its lane's next turn for it."""

    run: Callable[[], Any]


@dataclass
class _Seen:
    digest: str
    request_id: str
    runs: int = 0
    refused: str | None = None
    """Why the submission was refused at the edge (its ``seq_id`` is used all the same)."""


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
        placeholder: holds the place of a refused ``seq_id`` (nothing runs; its future
            failed at once).
        lane: the fairness lane of an unordered job (e.g. its session); ``None``: the
            ordered queue.
    """

    request_id: str
    kind: str
    run: Callable[[], Any] | None = None
    fused: FusedWork | None = None
    model_id: str | None = None
    seq_id: int | None = None
    placeholder: bool = False
    lane: str | None = None
    enqueued: float = field(default_factory=time.monotonic)


class Scheduler:
    """Orders, deduplicates and runs jobs on one worker thread.

    Args:
        futures: where results go.
        seq_gap_timeout_s: how long a buffered request waits for a missing ``seq_id`` (with no
            progress of its model's order).
        seq_window: how far ahead of the expected ``seq_id`` a submission may be.
    """

    def __init__(
        self,
        futures: FutureTable,
        *,
        seq_gap_timeout_s: float,
        seq_window: int = DEFAULT_SEQ_WINDOW,
    ) -> None:
        if seq_window < 1:
            raise ValueError(f"seq_window: expected >= 1, got {seq_window}")
        self.futures = futures
        self.seq_gap_timeout_s = seq_gap_timeout_s
        self.seq_window = seq_window
        self._cond = threading.Condition()
        self._ready: collections.deque[Job] = collections.deque()
        # Unordered jobs by lane, in round-robin order (a lane served goes to the end).
        self._lanes: dict[str, collections.deque[Job]] = {}
        self._lane_turn = False
        self._next_seq: dict[str, int] = {}
        self._buffer: dict[str, dict[int, Job]] = {}
        # When each model with buffered requests last made progress (its gap's clock).
        self._gap_since: dict[str, float] = {}
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
            self._gap_since.pop(model_id, None)
            waiting = [j for j in self._buffer.pop(model_id, {}).values() if not j.placeholder]
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
        if seen.refused is not None:  # whatever the body: the id is used, nothing runs
            return seen.request_id
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
                passed or one beyond the window (400), or an unknown model (404).
        """
        with self._cond:
            if job.model_id is None or job.seq_id is None:
                if job.model_id is not None and job.model_id not in self._next_seq:
                    raise ApiError(404, f"unknown model_id {job.model_id!r}", field="model_id")
                self.futures.create(job.request_id, job.kind)
                self._queue_unordered(job)
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
            self._check_in_window(model_id, seq_id)
            self.futures.create(job.request_id, job.kind)
            self._place(job, model_id, seq_id, _Seen(digest, job.request_id))
            return job.request_id

    def refuse(self, model_id: str, seq_id: int, digest: str, reason: str) -> None:
        """Count the ``seq_id`` of a submission refused at the edge as used.

        Nothing runs for it, but the model's order moves past it as if it had. A later
        submission at this id (a retry, or a client's gap-filling no-op) is answered with a
        future that has already failed with ``reason``. Ignored when the model is unknown, or
        the seq id was already used, is behind the order or beyond the window: none of them is
        a gap anyone waits on.
        """
        with self._cond:
            if model_id not in self._next_seq or (model_id, seq_id) in self._seen:
                return
            try:
                self._check_in_window(model_id, seq_id)
            except ApiError:
                return
            request_id = uuid.uuid4().hex
            self.futures.create(request_id, "refused")
            self.futures.fail(
                request_id,
                f"seq_id {seq_id} of model {model_id!r} was refused when first submitted: {reason}",
                "user",
            )
            job = Job(request_id, "refused", model_id=model_id, seq_id=seq_id, placeholder=True)
            self._place(job, model_id, seq_id, _Seen(digest, request_id, refused=reason))

    def _check_in_window(self, model_id: str, seq_id: int) -> None:
        expected = self._next_seq[model_id]
        if seq_id < expected:
            raise ApiError(
                400,
                f"seq_id {seq_id} of model {model_id!r} is behind the model's order "
                f"(next expected seq_id is {expected})",
                field="seq_id",
            )
        if seq_id > expected + self.seq_window:
            raise ApiError(
                400,
                f"seq_id {seq_id} of model {model_id!r} is more than seq_window={self.seq_window} "
                f"ahead of the model's order (next expected seq_id is {expected})",
                field="seq_id",
            )

    def _place(self, job: Job, model_id: str, seq_id: int, seen: _Seen) -> None:
        """Remember ``job``'s seq id and queue it, or buffer it behind its gap (lock held)."""
        self._seen[(model_id, seq_id)] = seen
        if len(self._seen) > MAX_REMEMBERED_SEQS:
            del self._seen[next(iter(self._seen))]
        if seq_id == self._next_seq[model_id]:
            if not job.placeholder:
                self._ready.append(job)
            self._advance(model_id, seq_id + 1)
        else:
            self._buffer.setdefault(model_id, {})[seq_id] = job
            self._gap_since.setdefault(model_id, time.monotonic())
        self._cond.notify_all()

    def _advance(self, model_id: str, next_seq: int) -> None:
        """Move the model's order to ``next_seq`` and release what was waiting there."""
        buffer = self._buffer.get(model_id, {})
        while next_seq in buffer:
            job = buffer.pop(next_seq)
            if not job.placeholder:
                self._ready.append(job)
            next_seq += 1
        self._next_seq[model_id] = next_seq
        if buffer:
            self._gap_since[model_id] = time.monotonic()  # progress: the gap's clock restarts
        else:
            self._buffer.pop(model_id, None)
            self._gap_since.pop(model_id, None)

    def _expire_gaps(self) -> list[tuple[Job, str]]:
        """Give up gaps that outlived the timeout (caller holds the lock).

        The order skips to the lowest waiting ``seq_id`` only; the consecutive run waiting
        there fails and the order moves past it. Requests behind a further gap keep waiting,
        with a fresh timeout: the model never moves past an id it has not received but might.
        """
        expired: list[tuple[Job, str]] = []
        now = time.monotonic()
        for model_id in list(self._buffer):
            if now - self._gap_since[model_id] < self.seq_gap_timeout_s:
                continue
            buffer = self._buffer[model_id]
            expected = self._next_seq[model_id]
            lowest = min(buffer)
            run = [lowest]
            while run[-1] + 1 in buffer:
                run.append(run[-1] + 1)
            missing = f"seq_id {expected}"
            if lowest > expected + 1:
                missing = f"seq_ids {expected}..{lowest - 1}"
            message = (
                f"model {model_id!r}: waited {self.seq_gap_timeout_s:g} s for {missing}, which "
                f"never arrived; the requests queued behind it (seq_ids {run[0]}..{run[-1]}) "
                "were dropped"
            )
            for seq in run:
                job = buffer.pop(seq)
                if not job.placeholder:
                    expired.append((job, message))
            self._advance(model_id, run[-1] + 1)
        return expired

    # ----------------------------------------------------------------- worker

    def _queue_unordered(self, job: Job) -> None:
        if job.lane is None:
            self._ready.append(job)
        else:
            self._lanes.setdefault(job.lane, collections.deque()).append(job)

    def _take(self) -> list[Job]:
        """The next job, plus compatible fused jobs (caller holds the lock): the ordered queue
        and the lanes take turns, and the lanes take turns among themselves."""
        from_lane = bool(self._lanes) and (not self._ready or self._lane_turn)
        self._lane_turn = not from_lane
        if from_lane:
            lane = next(iter(self._lanes))
            jobs = self._lanes.pop(lane)
            job = jobs.popleft()
            if jobs:
                self._lanes[lane] = jobs  # back of the round
            return [job]
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
                while not (self._ready or self._lanes or self._stopping or expired):
                    self._cond.wait(timeout=min(0.5, self.seq_gap_timeout_s / 4) or 0.01)
                    expired = self._expire_gaps()
                if self._stopping:
                    return
                batch = self._take() if self._ready or self._lanes else []
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
            if isinstance(result, Resume):
                job.run = result.run
                with self._cond:
                    self._queue_unordered(job)
                continue
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
