"""The backend behind the HTTP routes, assembled by composition.

::

    Backend
    ├── store        Store: sessions, runs, checkpoints, telemetry over one Database
    ├── futures      FutureTable: results the worker completes and long-polls wait for
    ├── scheduler    Scheduler: per-model seq order, duplicates, the one worker thread
    ├── models       ModelRegistry: presets, live models, runtimes (worker thread only)
    ├── samplers     SamplerRegistry: sampling sessions and their weights
    ├── tenancy      Tenancy: which tenant owns each session, model, sampler, run, future
    ├── custom_losses CustomLosses: the sessions' uploaded custom-loss graphs
    └── job builders (each over one JobContext):
        training     TrainingJobs: forward_backward / forward (fused), optim_step
        lifecycle    ModelJobs: create_model, load_weights, unload_model
        checkpoints  CheckpointJobs: save_weights, save_weights_for_sampler
        sampling     SamplingJobs: create_sampling_session, asample

Handlers hand a builder a request that the edge decoded; the builder validates it (bad input is
answered 4xx and changes nothing), registers what the client must see at once, and queues a job.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

from tinkjax.server._custom_graphs import CustomLosses
from tinkjax.server._futures import FutureTable
from tinkjax.server._jobs import JobContext
from tinkjax.server._jobs_checkpoints import CheckpointJobs
from tinkjax.server._jobs_models import ModelJobs
from tinkjax.server._jobs_sampling import SamplingJobs
from tinkjax.server._jobs_training import TrainingJobs
from tinkjax.server._models_registry import (
    DEFAULT_MAX_LIVE_MODELS,
    ModelRegistry,
    ServedModels,
    warmup,
)
from tinkjax.server._samplers import SamplerRegistry
from tinkjax.server._scheduler import DEFAULT_SEQ_WINDOW, Scheduler
from tinkjax.server._store import Store, UnknownSessionError
from tinkjax.server._tenants import Tenancy

__all__ = ["DEFAULT_SESSION_TIMEOUT_S", "Backend"]

_log = logging.getLogger(__name__)

#: A session neither heartbeating nor using its models this long has ended; its models are freed.
DEFAULT_SESSION_TIMEOUT_S = 600.0


class Backend:
    """The parts of one server (see the module docstring).

    Args:
        store: durable metadata and checkpoint files.
        futures: where job results go.
        seq_gap_timeout_s: how long a request waits for a missing ``seq_id``.
        seq_window: how far ahead of a model's expected ``seq_id`` a submission may be.
        models: base models served (``None``: every preset; see ``ModelRegistry``).
        mesh: device mesh of Hugging Face models (see ``ModelRegistry``).
        max_live_models: the most training models held at once (``None``: no limit).
        session_timeout_s: a session whose last heartbeat and last model request are older
            than this has ended (``None``: only a finish request ends one).
        warmup: training shapes compiled ahead (``ModelRegistry(warmup=)``; ``None``: from
            ``$TINKJAX_WARMUP``, off when unset).
    """

    def __init__(
        self,
        store: Store,
        futures: FutureTable,
        *,
        seq_gap_timeout_s: float,
        seq_window: int = DEFAULT_SEQ_WINDOW,
        models: ServedModels | None = None,
        max_live_models: int | None = DEFAULT_MAX_LIVE_MODELS,
        session_timeout_s: float | None = DEFAULT_SESSION_TIMEOUT_S,
        warmup: Sequence[tuple[str, int]] | None = None,
        mesh: Any = "auto",
    ) -> None:
        if session_timeout_s is not None and session_timeout_s <= 0:
            raise ValueError(f"session_timeout_s: expected > 0 or None, got {session_timeout_s}")
        self.store = store
        self.futures = futures
        self.session_timeout_s = session_timeout_s
        self.scheduler = Scheduler(
            futures, seq_gap_timeout_s=seq_gap_timeout_s, seq_window=seq_window
        )
        self.models = ModelRegistry(
            store, self.scheduler, models=models, max_live_models=max_live_models,
            warmup=warmup, mesh=mesh,
        )  # fmt: skip
        self.samplers = SamplerRegistry(store, self.models)
        self.tenancy = Tenancy(store, self.models, futures)
        ctx = JobContext(store, self.scheduler, self.models, self.samplers)
        self.custom_losses = CustomLosses(futures)
        self.training = TrainingJobs(ctx, self.custom_losses)
        self.lifecycle = ModelJobs(ctx)
        self.checkpoints = CheckpointJobs(ctx)
        self.sampling = SamplingJobs(ctx)
        self._stopping = threading.Event()
        self._reaper: threading.Thread | None = None

    def start(self) -> None:
        """Start the worker (it imports the model code first, off the caller's thread) and,
        with a ``session_timeout_s``, the thread that ends timed-out sessions."""
        self.scheduler.start(warmup=warmup)
        if self.session_timeout_s is not None:
            self._reaper = threading.Thread(
                target=self._reap_loop, name="tinkjax-session-reaper", daemon=True
            )
            self._reaper.start()

    def stop(self) -> None:
        """Stop the worker and reaper threads."""
        self._stopping.set()
        if self._reaper is not None:
            self._reaper.join(5)
        self.scheduler.stop()

    def end_session(self, session_id: str) -> int:
        """Free what an ended session holds in memory: its training models (their adapters
        are removed once their queued requests ran; saved checkpoints stay and a later
        ``load_weights`` re-creates a model), its samplers' weights and its recorded sequences.
        Returns how many models are being freed."""
        self.samplers.forget_session(session_id)
        self.custom_losses.forget_session(session_id)
        self.sampling.ctx.sequences.forget_session(session_id)
        n = 0
        for record in self.models.records():
            if record.session_id == session_id and not record.ending:
                record.ending = True
                self.lifecycle.free(record)
                n += 1
        return n

    def reap_sessions(self, *, later_s: float = 0.0) -> list[str]:
        """End every session holding models that finished, or whose last heartbeat and last
        model request are both older than ``session_timeout_s`` (as if ``later_s`` more seconds
        had passed); returns their ids."""
        mono, wall = time.monotonic() + later_s, time.time() + later_s
        last_used: dict[str, float] = {}
        for record in self.models.records():
            if record.session_id is not None and not record.ending:
                sid = record.session_id
                last_used[sid] = max(last_used.get(sid, 0.0), record.last_used)
        ended = []
        for sid, used in last_used.items():
            try:
                status = self.store.sessions.status(sid)
            except UnknownSessionError:  # not a session of this store: leave its models
                continue
            beat = status["last_heartbeat"]
            idle = mono - used if beat is None else min(mono - used, wall - beat.timestamp())
            timeout = self.session_timeout_s
            if status["finished_at"] is not None or (timeout is not None and idle > timeout):
                self.end_session(sid)
                ended.append(sid)
        return ended

    def _reap_loop(self) -> None:
        assert self.session_timeout_s is not None
        period = min(30.0, max(0.05, self.session_timeout_s / 4))
        while not self._stopping.wait(period):
            try:
                self.reap_sessions()
            except Exception:  # never let a store error kill the reaper
                _log.exception("ending timed-out sessions failed")
