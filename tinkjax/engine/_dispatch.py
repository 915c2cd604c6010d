"""One engine dispatch for the custom-loss steps of several runs that are ready together.

In a sweep, N runs' ``forward_backward_custom`` steps reach the engine at about the same time,
each with its own weights and parameters but, when the runs share a spec's structure and their
batches a bucket, the same plan and the same argument shapes. Run one by one that is N program
dispatches; stacked along a new leading run axis it is one: :data:`program_stacked`, the engine
program under ``jax.vmap``, computes every run's outputs, which are then read exactly as a
single step's are.

:class:`Dispatcher` does the grouping on an event loop. A step's :meth:`~Dispatcher.run` queues
it; the queue is flushed on the loop's next turn, or, while a dispatch is running, as soon as it
ends (so under load arrivals accumulate into larger groups). Steps with equal
:func:`dispatch_key` (plan, float dtype, argument structure and shapes) are stacked; a group of
``n ≥ 2`` runs is padded to the next of :data:`RUN_BUCKETS` (repeating its last run, whose extra
outputs are dropped), so the number of compiled programs depends on neither the run count nor
the values: at most one per plan, shape bucket and run bucket. A step alone runs the ordinary
program.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from tinkjax.engine._program import fetch, program_stacked
from tinkjax.engine._step import Step

__all__ = ["RUN_BUCKETS", "Dispatcher", "dispatch_key", "dispatcher", "run_together"]

#: Run-axis sizes of stacked dispatches; larger groups are split into groups of the last.
RUN_BUCKETS = (2, 4, 8, 16)


def dispatch_key(step: Step) -> tuple[Any, ...]:
    """Steps with equal keys can be stacked into one dispatch."""
    leaves, treedef = jax.tree.flatten(step.args)
    shapes = tuple((np.shape(x), np.result_type(x).str) for x in leaves)
    return (step.plan, step.dtype.str, treedef, shapes)


def _bucket(n: int) -> int:
    return next(b for b in RUN_BUCKETS if b >= n)


def run_together(steps: Sequence[Step]) -> list[dict[str, Any]]:
    """Every step's outputs (as :meth:`Step.run` returns them) from one stacked dispatch.

    The steps must share a :func:`dispatch_key`; at most ``RUN_BUCKETS[-1]`` of them.
    """
    n = len(steps)
    if n == 1:
        return [steps[0].run()]
    size = _bucket(n)
    first = steps[0]
    treedef = jax.tree.structure(first.args)
    columns = zip(*(jax.tree.leaves(s.args) for s in steps), strict=True)
    stacked = [
        np.stack([np.asarray(x) for x in column] + [np.asarray(column[-1])] * (size - n))
        for column in columns
    ]
    grad, small = program_stacked(*jax.tree.unflatten(treedef, stacked), plan=first.plan)
    grad, small = np.asarray(grad), np.asarray(small)
    return [fetch((grad[i], small[i]), first.plan, first.dtype) for i in range(n)]


class Dispatcher:
    """Groups the steps queued on one event loop into stacked dispatches (see the module doc).

    ``inline(steps)`` tells whether a group may run on the loop's own thread (small and already
    compiled); otherwise it runs in a worker thread.
    """

    def __init__(self) -> None:
        self._queue: list[tuple[Step, bool, asyncio.Future[dict[str, Any]]]] = []
        self._busy = False
        self._scheduled = False
        self._compiled: set[tuple[Any, ...]] = set()
        self._task: asyncio.Future[None] | None = None

    async def run(self, step: Step, *, small: bool) -> dict[str, Any]:
        """The step's outputs, computed alone or stacked with steps queued at the same time."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[dict[str, Any]] = loop.create_future()
        self._queue.append((step, small, future))
        if not self._busy and not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        self._scheduled = False
        if self._busy or not self._queue:
            return
        queue, self._queue = self._queue, []
        groups: dict[tuple[Any, ...], list[tuple[Step, bool, asyncio.Future[Any]]]] = {}
        for item in queue:
            groups.setdefault(dispatch_key(item[0]), []).append(item)
        chunks = [
            items[i : i + RUN_BUCKETS[-1]]
            for items in groups.values()
            for i in range(0, len(items), RUN_BUCKETS[-1])
        ]
        self._busy = True
        self._task = asyncio.ensure_future(self._run_chunks(chunks))

    async def _run_chunks(self, chunks: list[list[tuple[Step, bool, asyncio.Future[Any]]]]) -> None:
        try:
            for chunk in chunks:
                steps = [step for step, _, _ in chunk]
                key = (len(steps) if len(steps) == 1 else _bucket(len(steps)), steps[0].shape_key)
                try:
                    if key in self._compiled and all(small for _, small, _ in chunk):
                        outs = run_together(steps)
                    else:  # a first run compiles, a large one computes: keep them off the loop
                        outs = await asyncio.to_thread(run_together, steps)
                    self._compiled.add(key)
                except Exception as exc:
                    for _, _, future in chunk:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, _, future), out in zip(chunk, outs, strict=True):
                    if not future.done():
                        future.set_result(out)
        finally:
            self._busy = False
            if self._queue:
                self._flush()


_dispatchers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Dispatcher] = (
    weakref.WeakKeyDictionary()
)


def dispatcher() -> Dispatcher:
    """The running event loop's :class:`Dispatcher`."""
    loop = asyncio.get_running_loop()
    found = _dispatchers.get(loop)
    if found is None:
        found = _dispatchers[loop] = Dispatcher()
    return found
