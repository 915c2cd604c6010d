"""A custom-loss step prepared before its logprobs exist.

``forward_backward_custom`` knows everything about its step except the logprobs once it has
sent the forward pass: the loss inputs, the step's spec, the shapes.
:func:`prepare_custom_loss_async` does all the work that needs no logprobs (building the spec
unless it is given one, awaiting the regularizers' ``prepare`` steps, packing the loss inputs,
planning) while the server runs the forward pass; :meth:`PendingCustomLoss.run` then only
packs the logprobs and runs the compiled program. The packing leaves the step's critical path,
and regularizers' I/O (a reward model, a database) overlaps the server's forward pass instead
of following it.
"""

from __future__ import annotations

import asyncio
import functools
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any, Unpack

import numpy.typing as npt

from tinkjax.engine._dispatch import dispatcher
from tinkjax.engine._events import EmitFn, emit_exception, emit_stop, open_span
from tinkjax.engine._loss_spec import CustomLossSpec, LossSpec, SpecOptions
from tinkjax.engine._prepare import run_prepares
from tinkjax.engine._result import CustomLossResult
from tinkjax.engine._step import StepTemplate, finish_step, plan_step

__all__ = ["PendingCustomLoss", "prepare_custom_loss_async"]

#: Batches up to this many logprobs are packed and run on the calling (event-loop) thread
#: once their program has run in this process: two thread hops (~0.1–0.3 ms) would cost more
#: than the work. Larger batches, and any first run (it compiles), go to a worker thread so
#: the loop stays responsive (see :class:`~tinkjax.engine._dispatch.Dispatcher`).
INLINE_MAX_LOGPROBS = 16_384


class PendingCustomLoss:
    """A prepared step waiting for its logprobs; :meth:`run` it once, or :meth:`abandon` it.

    The ``custom_loss.start`` event was emitted when it was prepared; ``run`` ends the span
    with ``custom_loss.stop`` (or ``custom_loss.exception``), ``abandon`` with
    ``custom_loss.exception``. Their ``duration`` is the engine's own time: preparing plus
    running, not the wait for the logprobs in between.
    """

    def __init__(
        self, template: StepTemplate, emit: EmitFn | None, spent: float, *, small: bool
    ) -> None:
        self._template = template
        self._emit = emit
        self._spent = spent
        self._done = False
        self._small = small  # ≤ INLINE_MAX_LOGPROBS logprobs

    async def run(self, logprobs: Sequence[npt.ArrayLike]) -> CustomLossResult:
        """Values, breakdown and gradients for these per-datum logprobs.

        Raises:
            EngineInputError: logprobs of the wrong count, shape or dtype.
            NonFiniteError: a non-finite logprob, value or gradient (names the term and datum).
            RuntimeError: the step was already run or abandoned.
        """
        if self._done:
            raise RuntimeError("this custom-loss step was already run or abandoned")
        self._done = True
        t0 = time.perf_counter()
        try:
            if self._small:
                step = self._template.step(logprobs)
            else:
                step = await asyncio.to_thread(self._template.step, logprobs)
            # alone, or stacked with other runs' steps ready at the same time (_dispatch.py)
            out = await dispatcher().run(step, small=self._small)
            result = finish_step(step, out)
        except Exception as exc:
            emit_exception(self._emit, exc, self._spent + time.perf_counter() - t0)
            raise
        emit_stop(self._emit, result, self._spent + time.perf_counter() - t0)
        return result

    def abandon(self, exc: BaseException) -> None:
        """End the step without running it (its logprobs never came), reporting ``exc``."""
        if not self._done:
            self._done = True
            emit_exception(self._emit, exc, self._spent)


async def prepare_custom_loss_async(
    inputs: Sequence[Mapping[str, npt.ArrayLike]],
    shapes: Sequence[tuple[int, ...]],
    spec: CustomLossSpec | LossSpec = None,
    *,
    data: Sequence[Any] | None = None,
    emit: EmitFn | None = None,
    **options: Unpack[SpecOptions],
) -> PendingCustomLoss:
    """Everything of a :func:`~tinkjax.engine.compute_custom_loss_async` step that does not
    need the logprobs, for logprobs of per-datum ``shapes`` (``[n]`` or ``[n, K]``).

    Arguments and errors are those of :func:`~tinkjax.engine.compute_custom_loss`: ``spec``
    is a :class:`~tinkjax.engine.CustomLossSpec`, or the base loss of the spec that
    ``options`` build.
    """
    spec, started = open_span(emit, spec, options)
    try:
        prepared = await run_prepares(spec.regularizers, inputs if data is None else data)
        small = sum(math.prod(s) for s in shapes) <= INLINE_MAX_LOGPROBS
        if small:
            template = plan_step(spec, inputs, shapes, prepared)
        else:
            template = await asyncio.to_thread(
                functools.partial(plan_step, spec, inputs, shapes, prepared)
            )
    except Exception as exc:
        emit_exception(emit, exc, time.perf_counter() - started)
        raise
    return PendingCustomLoss(template, emit, time.perf_counter() - started, small=small)
