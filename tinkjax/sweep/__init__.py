"""Sweeps: many runs driven as one.

A sweep is a base run config, a grid and/or a list of variations over its leaves, and a step
function; :func:`run` drives every run concurrently against any backend, records a tidy table
of every step's per-term numbers, isolates and retries failures, and, given a directory, resumes
after an interruption::

    from tinkjax import sweep

    results = sweep.run(
        sweep.supervised(datums, batch_size=8),
        steps=50,
        base={"regularizers": {"entropy": {"weight": 0.01}}},
        grid={"optimizer.learning_rate": [1e-3, 3e-3], "regularizers.entropy.weight": [0, 0.01, 0.1]},
        directory="sweeps/entropy",
        checkpoint_every=10,
    )
    df = results.to_pandas()

See ``docs/sweeps.md``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tinkjax.sweep._config import DEFAULT_CONFIG, RunSpec, expand, flatten, get_leaf, merged
from tinkjax.sweep._driver import EarlyStop, RetryPolicy, Run, StepFn, run_async
from tinkjax.sweep._errors import SweepConfigError, SweepDirectoryError
from tinkjax.sweep._loops import adam_params, learning_rate, regularizers_of, rl, supervised
from tinkjax.sweep._plot import plot_terms
from tinkjax.sweep._results import Results, RunFailure, StepResult, load

if TYPE_CHECKING:
    from tinkjax.client import ServiceClient

__all__ = [
    "DEFAULT_CONFIG",
    "EarlyStop",
    "Results",
    "RetryPolicy",
    "Run",
    "RunFailure",
    "RunSpec",
    "StepFn",
    "StepResult",
    "SweepConfigError",
    "SweepDirectoryError",
    "adam_params",
    "expand",
    "flatten",
    "get_leaf",
    "learning_rate",
    "load",
    "merged",
    "plot_terms",
    "regularizers_of",
    "rl",
    "run",
    "run_async",
    "supervised",
]


def run(
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
    """Run every configuration of a sweep; returns its :class:`Results` (blocks).

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
    coro = run_async(
        step, steps=steps, base=base, grid=grid, runs=runs, directory=directory,
        checkpoint_every=checkpoint_every, max_in_flight=max_in_flight, retry=retry,
        early_stop=early_stop, service=service, base_url=base_url, api_key=api_key,
        progress=progress,
    )  # fmt: skip
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    # Called inside a running loop (a notebook): run the sweep's own loop on a worker thread.
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="tinkjax-sweep") as pool:
        return pool.submit(asyncio.run, coro).result()
