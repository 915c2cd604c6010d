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
import inspect
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

from tinkjax.sweep._config import DEFAULT_CONFIG, RunSpec, expand, flatten, get_leaf, merged
from tinkjax.sweep._driver import EarlyStop, RetryPolicy, Run, StepFn, run_async
from tinkjax.sweep._errors import SweepConfigError, SweepDirectoryError
from tinkjax.sweep._loops import adam_params, learning_rate, regularizers_of, rl, supervised
from tinkjax.sweep._plot import plot_terms
from tinkjax.sweep._results import Results, RunFailure, StepResult, load

P = ParamSpec("P")
R = TypeVar("R")

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


def _blocking(coroutine_fn: Callable[P, Coroutine[Any, Any, R]]) -> Callable[P, R]:
    """The blocking twin of a coroutine function: runs it to completion on its own event loop
    (on a worker thread when called inside a running loop, e.g. in a notebook)."""

    def twin(*args: P.args, **kwargs: P.kwargs) -> R:
        coro = coroutine_fn(*args, **kwargs)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(coro)
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="tinkjax-sweep") as pool:
            return pool.submit(asyncio.run, coro).result()

    twin.__name__ = twin.__qualname__ = coroutine_fn.__name__.removesuffix("_async")
    twin.__module__ = __name__
    twin.__doc__ = (
        f"Blocking twin of :func:`{coroutine_fn.__name__}` (returns its result).\n\n"
        f"{inspect.getdoc(coroutine_fn)}"
    )
    twin.__signature__ = inspect.signature(coroutine_fn)  # type: ignore[attr-defined]
    return twin


#: Run a sweep and wait for its :class:`Results` (see :func:`run_async` for the arguments).
run = _blocking(run_async)
