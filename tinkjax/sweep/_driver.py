"""Driving the runs of a sweep: concurrently, each in order, failures isolated, resumable.

Every run is one task: it creates its LoRA model (``base_model``, ``lora.rank``, ``seed`` from
its config) — or, resuming, loads its last checkpoint with the optimizer state — then runs its
steps one after another, so each run's requests keep their order. At most ``max_in_flight``
steps (of all runs) run at once. After each step the run's row is logged; on the checkpoint
schedule, and after the last step, its state is saved (``save_state``) and the checkpoint
logged once acknowledged. A step that raises ends the attempt: the failure is logged and,
per the :class:`RetryPolicy`, the run starts again from its last checkpoint; the other runs
go on either way.

With a directory, a second invocation of the same sweep replays the log: finished (or finally
failed) runs are skipped, the others resume from their checkpoints, and the rows they had
logged past them are superseded by the recomputed ones. On the embedded backend the sweep
then runs its own local backend with its checkpoints in ``<directory>/backend`` and one API key
kept there, so the resumed sweep finds them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tinkjax.sweep._config import RunSpec, expand, fingerprint
from tinkjax.sweep._directory import MemoryLog, RunRecord, SweepDirectory
from tinkjax.sweep._errors import SweepConfigError
from tinkjax.sweep._results import Results, collect, row_of

if TYPE_CHECKING:
    from tinkjax.client import ServiceClient, TrainingClient

__all__ = ["RetryPolicy", "Run", "run_async"]


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """How often a failing run is tried again (from its last checkpoint).

    Attributes:
        max_attempts: attempts in all (1: never retry).
        delay_s: wait before the second attempt; each later wait is ``backoff`` times longer.
        backoff: growth of the wait.
        retry_on: exception types that are retried; others fail the run at once. A sweep
            configuration error is never retried.
    """

    max_attempts: int = 1
    delay_s: float = 1.0
    backoff: float = 2.0
    retry_on: tuple[type[BaseException], ...] = (Exception,)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise SweepConfigError(
                f"RetryPolicy.max_attempts: expected >= 1, got {self.max_attempts}"
            )
        if self.delay_s < 0 or self.backoff < 1:
            raise SweepConfigError(
                f"RetryPolicy: expected delay_s >= 0 and backoff >= 1, got {self.delay_s}, {self.backoff}"
            )

    def retries(self, exc: BaseException, attempt: int) -> bool:
        """Whether ``attempt`` (1-based), which raised ``exc``, is followed by another."""
        if isinstance(exc, SweepConfigError):
            return False
        return attempt < self.max_attempts and isinstance(exc, self.retry_on)

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed ``attempt`` (1-based)."""
        return self.delay_s * self.backoff ** (attempt - 1)


@dataclasses.dataclass
class Run:
    """What a step function gets: one run's clients, config and scratch space.

    Attributes:
        run_id: the run's id (``run-NNN-<hash>``).
        config: the run's whole config (nested dicts; treat as read-only).
        overrides: the leaves this run varies, by dotted path.
        steps: how many steps the run has.
        service: the sweep's ``ServiceClient`` (for sampling clients, REST calls).
        training: this run's ``TrainingClient``.
        state: scratch space for the step function (not saved; rebuilt after a resume).
    """

    run_id: str
    config: dict[str, Any]
    overrides: dict[str, Any]
    steps: int
    service: ServiceClient
    training: TrainingClient
    state: dict[str, Any] = dataclasses.field(default_factory=dict)


StepFn = Callable[[Run, int], Any]
EarlyStop = Callable[[Run, Mapping[str, Any]], bool]


def _fn_name(fn: Callable[..., Any]) -> str:
    return f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', repr(fn))}"


async def _call(step: StepFn, run: Run, index: int) -> Any:
    if inspect.iscoroutinefunction(step):
        return await step(run, index)
    result = await asyncio.to_thread(step, run, index)  # a blocking step function
    if inspect.isawaitable(result):
        return await result
    return result


class _Sweep:
    """One invocation: the runs, the log, the backend, the progress bar."""

    def __init__(
        self,
        specs: list[RunSpec],
        step: StepFn,
        *,
        steps: int,
        log: SweepDirectory | MemoryLog,
        service: ServiceClient,
        checkpoint_every: int | None,
        max_in_flight: int,
        retry: RetryPolicy,
        early_stop: EarlyStop | None,
        bar: Any,
    ) -> None:
        self.specs = specs
        self.step = step
        self.steps = steps
        self.log = log
        self.service = service
        self.checkpoint_every = checkpoint_every
        self.gate = asyncio.Semaphore(max_in_flight)
        self.retry = retry
        self.early_stop = early_stop
        self.bar = bar
        self.persist = isinstance(log, SweepDirectory) or checkpoint_every is not None

    async def drive(self, spec: RunSpec, rec: RunRecord) -> None:
        attempt = rec.attempts
        while True:
            attempt += 1
            try:
                await self._attempt(spec, rec, first=attempt == 1 and not rec.rows)
                return
            except Exception as exc:
                again = self.retry.retries(exc, attempt)
                self.log.append(
                    {
                        "kind": "failed", "run": spec.run_id, "attempt": attempt,
                        "error_type": type(exc).__name__, "error": str(exc)[:2000],
                        "traceback": "".join(traceback.format_exception(exc))[-8000:],
                        "final": not again,
                    }
                )  # fmt: skip
                if not again:
                    self.bar.update(self.steps - len(rec.rows))
                    return
                rec.attempts = attempt
                await asyncio.sleep(self.retry.delay(attempt))

    async def _attempt(self, spec: RunSpec, rec: RunRecord, *, first: bool) -> None:
        config = spec.config
        if rec.checkpoint is not None:
            done, path = rec.checkpoint
            training = await self.service.create_training_client_from_state_with_optimizer_async(
                path
            )
        else:
            done = -1
            training = await self.service.create_lora_training_client_async(
                str(config["base_model"]),
                rank=int(config["lora"]["rank"]),
                seed=int(config["seed"]),
            )
        if not first:
            dropped = sum(1 for r in rec.rows if r["step"] > done)
            rec.rows = [r for r in rec.rows if r["step"] <= done]
            self.log.append({"kind": "resume", "run": spec.run_id, "step": done})
            self.bar.update(-dropped)
        wall = rec.rows[-1]["wall_seconds"] if rec.rows else 0.0
        run = Run(spec.run_id, config, spec.overrides, self.steps, self.service, training)
        for index in range(done + 1, self.steps):
            async with self.gate:
                started = time.perf_counter()
                result = await _call(self.step, run, index)
                took = time.perf_counter() - started
            wall += took
            row = {
                "kind": "row", "run": spec.run_id, "step": index, **row_of(result),
                "step_seconds": took, "wall_seconds": wall,
            }  # fmt: skip
            self.log.append(row)
            rec.rows.append(row)
            self.bar.update(1)
            stop = self.early_stop is not None and bool(self.early_stop(run, row))
            last = index == self.steps - 1 or stop
            due = self.checkpoint_every is not None and (index + 1) % self.checkpoint_every == 0
            if self.persist and (due or last):
                saved = await (await training.save_state_async(f"{spec.run_id}-step{index}"))
                self.log.append(
                    {"kind": "checkpoint", "run": spec.run_id, "step": index, "path": saved.path}
                )
                rec.checkpoint = (index, saved.path)
            if stop:
                self.log.append({"kind": "finished", "run": spec.run_id, "status": "stopped"})
                self.bar.update(self.steps - 1 - index)
                return
        self.log.append({"kind": "finished", "run": spec.run_id, "status": "completed"})


def _progress(total: int, done: int, enabled: bool) -> Any:
    from tqdm import tqdm

    # plain tqdm: tqdm.auto warns (TqdmWarning) in a Jupyter kernel without ipywidgets, even
    # with the bar off. disable=None: no bar when the output is not a terminal (logs stay one
    # line per event)
    return tqdm(
        total=total, initial=done, desc="sweep", unit="step", disable=None if enabled else True
    )


def _open_service(
    directory: SweepDirectory | None, base_url: str | None, api_key: str | None
) -> tuple[ServiceClient, Any]:
    """The sweep's ``ServiceClient`` and, for a resumable sweep on the embedded backend, the
    local backend it started (stopped when the sweep ends)."""
    from tinkjax.client import ServiceClient, resolve_config

    config = resolve_config(base_url=base_url, api_key=api_key)
    if config.embedded and directory is not None:
        from tinkjax import server

        key = directory.backend_key()
        # only the sweep's own key: its checkpoints are this sweep's tenant, nobody else's
        handle = server.start(data_dir=directory.backend_dir(), api_keys=[key])
        return ServiceClient(base_url=str(handle.base_url), api_key=key), handle
    return ServiceClient(base_url=base_url, api_key=api_key), None


async def run_async(
    step: StepFn,
    *,
    steps: int,
    base: Mapping[str, Any] | None = None,
    grid: Mapping[str, Sequence[Any]] | None = None,
    runs: Sequence[Mapping[str, Any]] | None = None,
    directory: str | Path | None = None,
    checkpoint_every: int | None = None,
    max_in_flight: int = 32,
    retry: RetryPolicy | None = None,
    early_stop: EarlyStop | None = None,
    service: ServiceClient | None = None,
    base_url: str | None = None,
    api_key: str | None = None,
    progress: bool = True,
) -> Results:
    """Run every configuration of a sweep; returns its :class:`~tinkjax.sweep.Results`.

    Args:
        step: ``step(run, index)`` — async or plain — does one training step of one run with
            ``run.training`` (see :class:`Run`) and returns its output (a
            ``CustomForwardBackwardOutput``, a :class:`StepResult`, a metrics dict, or
            ``None``); or a ready loop, :func:`supervised` or :func:`rl`.
        steps: steps per run.
        base: the base run config, merged over :data:`DEFAULT_CONFIG`.
        grid: dotted leaf path → values; every combination is a run.
        runs: explicit runs, each a mapping of leaf paths (or nested tables) to values; added
            after the grid's. With neither ``grid`` nor ``runs`` the base config is one run.
        directory: the sweep directory (log, manifest, the local backend's checkpoints); run
            the same sweep again with it to resume. ``None``: results in memory only.
        checkpoint_every: save every run's state every this many steps (and after the last);
            with a directory and no schedule, only after the last step.
        max_in_flight: how many steps (of all runs) may run at once.
        retry: what to do when a step raises (default: the run fails, the others go on).
        early_stop: ``early_stop(run, row) -> bool`` after each step; true ends the run
            (status ``stopped``).
        service: a ``ServiceClient`` to use (any backend); default: one made from
            ``base_url``/``api_key`` or the environment, the embedded backend when neither.
        base_url, api_key: for the default service client.
        progress: show a progress bar over all the sweep's steps (on a terminal).

    Raises:
        SweepConfigError: a config leaf that does not exist, a grid with no runs, a bad
            setting (before anything runs; names the leaf or setting).
        SweepDirectoryError: the directory holds a different sweep (names the file).
    """
    if steps < 1:
        raise SweepConfigError(f"steps: expected >= 1, got {steps}")
    if checkpoint_every is not None and checkpoint_every < 1:
        raise SweepConfigError(f"checkpoint_every: expected >= 1 or None, got {checkpoint_every}")
    if max_in_flight < 1:
        raise SweepConfigError(f"max_in_flight: expected >= 1, got {max_in_flight}")
    if not callable(step):
        raise SweepConfigError(f"step: expected a step function, got {step!r:.80}")
    specs = expand(base, grid, runs)
    settings = {"steps": steps, "step": _fn_name(step), "checkpoint_every": checkpoint_every}
    log: SweepDirectory | MemoryLog = (
        SweepDirectory(directory, fingerprint(specs, settings), specs, settings)
        if directory is not None
        else MemoryLog()
    )
    records = log.replay()
    todo = [(s, records.setdefault(s.run_id, RunRecord())) for s in specs]
    todo = [(s, r) for s, r in todo if not r.done]
    own, handle = (
        (service, None)
        if service is not None
        else _open_service(log if isinstance(log, SweepDirectory) else None, base_url, api_key)
    )
    total = len(specs) * steps
    finished = total - sum(steps - len(r.rows) for _, r in todo)
    bar = _progress(total, finished, progress)
    sweep = _Sweep(
        specs, step, steps=steps, log=log, service=own, checkpoint_every=checkpoint_every,
        max_in_flight=max_in_flight, retry=retry or RetryPolicy(), early_stop=early_stop, bar=bar,
    )  # fmt: skip
    try:
        await asyncio.gather(*(sweep.drive(s, r) for s, r in todo))
    finally:
        bar.close()
        if service is None:
            await own.close_async()
        if handle is not None:
            handle.stop()
        log.close()
    final = log.replay()
    return collect(
        [(s.run_id, s.overrides) for s in specs],
        final,
        log.path if isinstance(log, SweepDirectory) else None,
    )
