"""The engine's entry points: compute a custom-loss step, or lower its program.

Each takes the step's :class:`~tinkjax.engine.CustomLossSpec` as ``spec``, or (as before the
spec existed) the base loss there and the keyword options that build the spec
(:func:`~tinkjax.engine.as_spec`), so both
``compute_custom_loss(inputs, lps, spec)`` and ``compute_custom_loss(inputs, lps, "ppo",
regularizers=[...])`` work; the spec is checked once, when it is built.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from typing import Any, Unpack

import jax
import numpy as np
import numpy.typing as npt

from tinkjax.engine._errors import EngineInputError
from tinkjax.engine._events import EmitFn, emit_exception, emit_stop, open_span
from tinkjax.engine._loss_spec import CustomLossSpec, LossSpec, SpecOptions, as_spec
from tinkjax.engine._pending import prepare_custom_loss_async
from tinkjax.engine._program import program
from tinkjax.engine._result import CustomLossResult
from tinkjax.engine._step import build_step, finish_step
from tinkjax.engine._term_specs import Regularizer

__all__ = ["compute_custom_loss", "compute_custom_loss_async", "lower_custom_loss"]


def compute_custom_loss(
    inputs: Sequence[Mapping[str, npt.ArrayLike]],
    logprobs: Sequence[npt.ArrayLike],
    spec: CustomLossSpec | LossSpec = None,
    *,
    data: Sequence[Any] | None = None,
    emit: EmitFn | None = None,
    **options: Unpack[SpecOptions],
) -> CustomLossResult:
    """Value, per-term breakdown and ∂total/∂logprobs of ``base + Σ weightᵢ·regᵢ``.

    Args:
        inputs: per datum, its ``loss_fn_inputs`` as arrays shaped like its logprobs
            (``target_tokens``, ``weights``, ``advantages``, ``logprobs`` = sampler logprobs,
            ``reference_logprobs``, ``paired_logprobs``, or any other key).
        logprobs: per datum, the target-token logprobs of the forward pass, ``[n]`` or
            ``[n, K]``.
        spec: the step's :class:`CustomLossSpec`; or its base loss (a built-in name such as
            ``"cross_entropy"`` or ``"ppo"``, a :class:`PackedLoss`, a :class:`DatumLoss` or
            bare Tinker-style callable ``fn(data, logprobs_list) -> (loss, metrics)`` written
            in JAX, or ``None``), the spec's other fields then coming from ``options``.
        data: what regularizers' ``prepare`` steps receive (default: ``inputs``).
        emit: ``emit(event, measurements, metadata)`` for ``custom_loss.start/stop/exception``
            and ``regularizer.compute``.
        **options: the other fields of the spec when ``spec`` is not one: ``regularizers``,
            ``loss_fn_config``, ``track_grad_norms``, ``norm_method``, ``dtype``,
            ``bucketing`` (see :class:`CustomLossSpec`).

    Raises:
        EngineInputError: bad specs or data, found before compiling.
        NonFiniteError: a value or gradient is NaN/Inf (names the term and datum).
        RegularizerError: a ``prepare`` step failed or timed out.
        RuntimeError: ``prepare`` steps need an event loop and one is already running (use
            :func:`compute_custom_loss_async`).
    """
    regs = spec.regularizers if isinstance(spec, CustomLossSpec) else options.get("regularizers")
    if any(isinstance(r, Regularizer) and r.prepare is not None for r in regs or ()):
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(
                compute_custom_loss_async(inputs, logprobs, spec, data=data, emit=emit, **options)
            )
        raise RuntimeError(
            "regularizers with a prepare step cannot run synchronously inside a running "
            "event loop; await compute_custom_loss_async instead"
        )
    spec, started = open_span(emit, spec, options)
    try:
        result = finish_step(build_step(spec, inputs, logprobs, prepared={}))
    except Exception as exc:
        emit_exception(emit, exc, time.perf_counter() - started)
        raise
    emit_stop(emit, result, time.perf_counter() - started)
    return result


async def compute_custom_loss_async(
    inputs: Sequence[Mapping[str, npt.ArrayLike]],
    logprobs: Sequence[npt.ArrayLike],
    spec: CustomLossSpec | LossSpec = None,
    *,
    data: Sequence[Any] | None = None,
    emit: EmitFn | None = None,
    **options: Unpack[SpecOptions],
) -> CustomLossResult:
    """:func:`compute_custom_loss`, awaiting ``prepare`` steps concurrently (each with its
    ``prepare_timeout``). The program runs as :meth:`PendingCustomLoss.run` runs it (in a
    worker thread, or inline for a small batch whose program has run before)."""
    if len(inputs) != len(logprobs):
        raise EngineInputError(
            f"got {len(inputs)} datums but {len(logprobs)} logprobs arrays; they must match"
        )
    pending = await prepare_custom_loss_async(
        inputs, [np.shape(lp) for lp in logprobs], spec, data=data, emit=emit, **options
    )
    return await pending.run(logprobs)


def lower_custom_loss(
    inputs: Sequence[Mapping[str, npt.ArrayLike]],
    logprobs: Sequence[npt.ArrayLike],
    spec: CustomLossSpec | LossSpec = None,
    **options: Unpack[SpecOptions],
) -> jax.stages.Lowered:
    """The lowered program of a step, for ``.compile().memory_analysis()`` / ``cost_analysis()``.

    Arguments as for :func:`compute_custom_loss`; regularizers with a ``prepare`` step are not
    supported here.
    """
    spec = as_spec(spec, **options)
    if spec.needs_prepare:
        raise EngineInputError("lower_custom_loss does not run prepare steps")
    step = build_step(spec, inputs, logprobs, prepared={})
    return program.lower(*step.args, plan=step.plan)
