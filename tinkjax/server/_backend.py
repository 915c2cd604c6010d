"""The backend behind the HTTP routes, assembled by composition.

::

    Backend
    ├── store        Store: sessions, runs, checkpoints, telemetry over one Database
    ├── futures      FutureTable: results the worker completes and long-polls wait for
    ├── scheduler    Scheduler: per-model seq order, duplicates, the one worker thread
    ├── models       ModelRegistry: presets, live models, runtimes (worker thread only)
    ├── samplers     SamplerRegistry: sampling sessions and their weights
    └── job builders (each over one JobContext):
        training     TrainingJobs: forward_backward / forward (fused), optim_step
        lifecycle    ModelJobs: create_model, load_weights, unload_model
        checkpoints  CheckpointJobs: save_weights, save_weights_for_sampler
        sampling     SamplingJobs: create_sampling_session, asample

Handlers hand a builder a request that the edge decoded; the builder validates it (bad input is
answered 4xx and changes nothing), registers what the client must see at once, and queues a job.
"""

from __future__ import annotations

from collections.abc import Sequence

from tinkjax.server._futures import FutureTable
from tinkjax.server._jobs import JobContext
from tinkjax.server._jobs_checkpoints import CheckpointJobs
from tinkjax.server._jobs_models import ModelJobs
from tinkjax.server._jobs_sampling import SamplingJobs
from tinkjax.server._jobs_training import TrainingJobs
from tinkjax.server._models_registry import ModelRegistry, warmup
from tinkjax.server._samplers import SamplerRegistry
from tinkjax.server._scheduler import Scheduler
from tinkjax.server._store import Store

__all__ = ["Backend"]


class Backend:
    """The parts of one server (see the module docstring).

    Args:
        store: durable metadata and checkpoint files.
        futures: where job results go.
        seq_gap_timeout_s: how long a request waits for a missing ``seq_id``.
        models: base models served (``None``: every preset).
    """

    def __init__(
        self,
        store: Store,
        futures: FutureTable,
        *,
        seq_gap_timeout_s: float,
        models: Sequence[str] | None = None,
    ) -> None:
        self.store = store
        self.futures = futures
        self.scheduler = Scheduler(futures, seq_gap_timeout_s=seq_gap_timeout_s)
        self.models = ModelRegistry(store, self.scheduler, models=models)
        self.samplers = SamplerRegistry(store, self.models)
        ctx = JobContext(store, self.scheduler, self.models, self.samplers)
        self.training = TrainingJobs(ctx)
        self.lifecycle = ModelJobs(ctx)
        self.checkpoints = CheckpointJobs(ctx)
        self.sampling = SamplingJobs(ctx)

    def start(self) -> None:
        """Start the worker (it imports the model code first, off the caller's thread)."""
        self.scheduler.start(warmup=warmup)

    def stop(self) -> None:
        """Stop the worker thread."""
        self.scheduler.stop()
