"""The sampler registry: sampling sessions over a base model, an in-memory weights snapshot, or
saved sampler weights, and how a sample request finds its weights."""

from __future__ import annotations

import collections
import threading
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tinkjax.server._errors import ApiError
from tinkjax.server._models_registry import ModelRecord, ModelRegistry
from tinkjax.server._store import Store
from tinkjax.server._weights import is_peft, load_peft, load_state
from tinkjax.types import GetSamplerResponse, SampleRequest

if TYPE_CHECKING:
    from tinkjax.models import AdapterSnapshot

__all__ = ["MAX_SNAPSHOT_SAMPLERS", "SamplerRecord", "SamplerRegistry", "unknown_sampler"]

#: In-memory weight snapshots kept for unnamed sampler saves (oldest evicted first; RL loops
#: make one per iteration).
MAX_SNAPSHOT_SAMPLERS = 256


def unknown_sampler(sampler_id: object) -> ApiError:
    """The 404 of a sampler id that is unknown (or another tenant's)."""
    return ApiError(404, f"sampler_id: unknown sampler {sampler_id!r}", field="sampler_id")


@dataclass
class SamplerRecord:
    """A sampling session: the base model, a frozen snapshot, or saved sampler weights."""

    sampler_id: str
    base_model: str
    model_path: str | None = None
    snapshot: AdapterSnapshot | None = None

    @property
    def lane(self) -> str:
        """The scheduler lane its sample requests share (fairness): the session that created
        the sampling session, or the weights named directly."""
        session, sep, _ = self.sampler_id.partition(":sample:")
        if sep:
            return f"session:{session}"
        return f"weights:{self.model_path or self.base_model}"


class SamplerRegistry:
    """Live samplers (durable ones also in the store) and the snapshots behind them.

    Args:
        store: where samplers are recorded.
        models: base models, runtimes and checkpoint lookups.
        max_snapshots: in-memory snapshots kept (oldest dropped).
    """

    def __init__(
        self, store: Store, models: ModelRegistry, *, max_snapshots: int = MAX_SNAPSHOT_SAMPLERS
    ) -> None:
        self.store = store
        self.models = models
        self.max_snapshots = max_snapshots
        self._lock = threading.Lock()
        self._samplers: dict[str, SamplerRecord] = {}
        self._snapshot_ids: collections.deque[str] = collections.deque()
        self._session_of: dict[str, str] = {}  # sampler id -> its session, while held here
        # samplers of saved weights whose snapshot is cached, least recently used first; beyond
        # max_snapshots the oldest cached weights are dropped (read again from disk when used)
        self._loaded: collections.OrderedDict[str, SamplerRecord] = collections.OrderedDict()

    def check_new(self, sampler_id: str) -> None:
        """400 when ``sampler_id`` is taken."""
        with self._lock:
            exists = sampler_id in self._samplers
        if exists or self.store.sessions.has_sampler(sampler_id):
            raise ApiError(
                400, f"sampling_session_seq_id: sampler {sampler_id!r} already exists",
                field="sampling_session_seq_id",
            )  # fmt: skip

    def add(self, record: SamplerRecord, *, session_id: str | None) -> None:
        """Record a sampler in the store and here; a snapshot one counts against the cap."""
        self.store.sessions.add_sampler(
            record.sampler_id, base_model=record.base_model, model_path=record.model_path,
            session_id=session_id,
        )  # fmt: skip
        with self._lock:
            self._samplers[record.sampler_id] = record
            if session_id is not None:
                self._session_of[record.sampler_id] = session_id
            if record.snapshot is not None:
                self._snapshot_ids.append(record.sampler_id)
                while len(self._snapshot_ids) > self.max_snapshots:
                    gone = self._snapshot_ids.popleft()
                    self._samplers.pop(gone, None)
                    self._session_of.pop(gone, None)

    def forget_session(self, session_id: str) -> int:
        """Drop the in-memory weights of an ended session's samplers; returns how many.

        Samplers of saved weights are read again from their checkpoint if used later; those of
        an unnamed snapshot are gone (sampling from them is a 404 that says so).
        """
        with self._lock:
            ids = [sid for sid, owner in self._session_of.items() if owner == session_id]
            for sid in ids:
                self._samplers.pop(sid, None)
                self._loaded.pop(sid, None)
                del self._session_of[sid]
            if ids:
                dropped = set(ids)
                self._snapshot_ids = collections.deque(
                    s for s in self._snapshot_ids if s not in dropped
                )
        return len(ids)

    def get(self, sampler_id: str) -> GetSamplerResponse:
        """``GET /samplers/{id}``."""
        with self._lock:
            record = self._samplers.get(sampler_id)
        if record is not None:
            return GetSamplerResponse(
                sampler_id=sampler_id, base_model=record.base_model, model_path=record.model_path
            )
        if not self.store.sessions.has_sampler(sampler_id):
            raise unknown_sampler(sampler_id)
        return self.store.sessions.get_sampler(sampler_id)

    def for_request(self, req: SampleRequest) -> SamplerRecord:
        """The weights a sample request names: a sampling session, a path or a base model."""
        if req.sampling_session_id is not None:
            return self._session(req.sampling_session_id)
        if req.model_path is not None:
            _, meta, _ = self.models.checkpoint(req.model_path, field="model_path")
            return SamplerRecord(
                sampler_id="", base_model=meta["base_model"], model_path=req.model_path
            )
        if req.base_model is not None:
            self.models.config(req.base_model)
            return SamplerRecord(sampler_id="", base_model=req.base_model)
        raise ApiError(
            400, "sampling_session_id, model_path or base_model: one is required",
            field="sampling_session_id",
        )  # fmt: skip

    def _session(self, sampler_id: str) -> SamplerRecord:
        with self._lock:
            record = self._samplers.get(sampler_id)
        if record is not None:
            return record
        info = self.get(sampler_id)
        if info.model_path is None:
            raise ApiError(
                404,
                f"sampling_session_id: {sampler_id!r} sampled from an in-memory weights "
                f"snapshot, which is gone (only the last {self.max_snapshots} are kept, and none "
                "survive a restart or the end of their session); create a new sampling client",
                field="sampling_session_id",
            )
        record = SamplerRecord(
            sampler_id=info.sampler_id, base_model=info.base_model, model_path=info.model_path
        )
        with self._lock:
            self._samplers[info.sampler_id] = record
        return record

    def snapshot(self, sampler: SamplerRecord) -> AdapterSnapshot | None:
        """The sampler's weights (worker thread; saved weights are read once and cached, the
        ``max_snapshots`` most recently used)."""
        if sampler.model_path is None:
            return sampler.snapshot
        if sampler.snapshot is not None:
            with self._lock:
                if sampler.sampler_id in self._loaded:
                    self._loaded.move_to_end(sampler.sampler_id)
            return sampler.snapshot
        folder, meta = self.store.checkpoints.folder(sampler.model_path)
        rt = self.models.runtime(sampler.base_model)
        if is_peft(folder):
            snapshot = rt.snapshot_from_peft(*load_peft(folder))
        else:  # a training checkpoint: its LoRA weights, loaded into a scratch adapter
            scratch = f"__sampler__:{uuid.uuid4().hex}"
            record = ModelRecord.from_meta(scratch, meta, session_id=None)
            rt.import_state(
                scratch, load_state(folder), info=record.adapter_info(), include_optimizer=False
            )
            try:
                snapshot = rt.snapshot(scratch)
            finally:
                rt.remove_adapter(scratch)
        if sampler.sampler_id:
            sampler.snapshot = snapshot
            with self._lock:
                self._loaded[sampler.sampler_id] = sampler
                while len(self._loaded) > self.max_snapshots:
                    _, evicted = self._loaded.popitem(last=False)
                    evicted.snapshot = None  # its checkpoint is read again on next use
        return snapshot
