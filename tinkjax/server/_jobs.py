"""What every job builder shares: the context it runs in and the submission of ordered jobs.

A job builder (``_jobs_training``, ``_jobs_checkpoints``, ``_jobs_sampling``) takes a request
that the edge already decoded, validates what is left against live state (the model exists, the
seq id is fresh), registers what the client must see at once, and queues a
:class:`~tinkjax.server._scheduler.Job` whose ``run`` executes on the worker thread.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from tinkjax.server._models_registry import ModelRecord, ModelRegistry
from tinkjax.server._samplers import SamplerRegistry
from tinkjax.server._scheduler import Job, Scheduler
from tinkjax.server._sequences import SequenceRecords
from tinkjax.server._store import Store
from tinkjax.server._validate import check_int
from tinkjax.types import UntypedAPIFuture

__all__ = ["JobContext", "Ordered", "new_request_id"]


def new_request_id() -> str:
    """A fresh future id."""
    return uuid.uuid4().hex


@dataclass(frozen=True)
class Ordered:
    """Where an ordered request goes.

    Attributes:
        record: the model.
        seq_id: its place in the model's order (``None``: unordered).
        digest: hash of the request body (duplicate detection).
        existing: the request id of an identical earlier submission, if any.
    """

    record: ModelRecord
    seq_id: int | None
    digest: str
    existing: str | None

    @property
    def model_id(self) -> str:
        return self.record.model_id

    def repeat(self) -> UntypedAPIFuture | None:
        """The earlier submission's future when this request is a repeat of it."""
        if self.existing is None:
            return None
        return UntypedAPIFuture(request_id=self.existing, model_id=self.model_id)


@dataclass(frozen=True)
class JobContext:
    """The backend's parts a job builder uses."""

    store: Store
    scheduler: Scheduler
    models: ModelRegistry
    samplers: SamplerRegistry
    sequences: SequenceRecords = field(default_factory=SequenceRecords)

    def ordered(self, model_id: Any, seq_id: Any, digest: str) -> Ordered:
        """Common checks of an ordered request: the model, the seq id, a duplicate's id."""
        record = self.models.get(model_id)
        if seq_id is None:
            return Ordered(record, None, digest, None)
        check_int(seq_id, "seq_id", low=0)
        return Ordered(record, seq_id, digest, self.scheduler.lookup(model_id, seq_id, digest))

    def job(self, kind: str, target: Ordered, **fields: Any) -> Job:
        """A job of ``kind`` in ``target``'s order."""
        return Job(new_request_id(), kind, model_id=target.model_id, seq_id=target.seq_id, **fields)

    def submit(self, job: Job, target: Ordered) -> UntypedAPIFuture:
        """Queue ``job`` in the model's order."""
        request_id = self.scheduler.submit(job, digest=target.digest)
        return UntypedAPIFuture(request_id=request_id, model_id=target.model_id)

    def submit_new_model(self, job: Job, target: Ordered) -> UntypedAPIFuture:
        """Register ``target.record`` and submit the job that creates it (the model's first
        ``seq_id``); a refused submission leaves no model behind."""
        self.models.register(target.record)
        try:
            request_id = self.scheduler.submit(job, digest=target.digest, register_next_seq=0)
        except Exception:
            self.models.discard(target.model_id)
            raise
        return UntypedAPIFuture(request_id=request_id, model_id=target.model_id)
