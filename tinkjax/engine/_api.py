"""The engine's public entry points."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
import numpy.typing as npt

from tinkjax.engine._engine import (
    _DEFAULT_BUCKETING,
    EmitFn,
    LossSpec,
    NormMethod,
    Prepared,
    _build_step,
    _emit_start,
    _exception,
    _finish,
    _report,
)
from tinkjax.engine._errors import EngineInputError
from tinkjax.engine._kernel import program
from tinkjax.engine._pack import Bucketing
from tinkjax.engine._pending import prepare_custom_loss_async
from tinkjax.engine._result import CustomLossResult
from tinkjax.engine._spec import Regularizer


def compute_custom_loss(
    inputs: Sequence[Mapping[str, npt.ArrayLike]],
    logprobs: Sequence[npt.ArrayLike],
    loss: LossSpec = None,
    *,
    regularizers: Sequence[Regularizer] = (),
    loss_fn_config: Mapping[str, float] | None = None,
    track_grad_norms: bool = False,
    norm_method: NormMethod = "vmap",
    data: Sequence[Any] | None = None,
    emit: EmitFn | None = None,
    dtype: npt.DTypeLike = np.float32,
    bucketing: Bucketing = _DEFAULT_BUCKETING,
) -> CustomLossResult:
    """Value, per-term breakdown and ∂total/∂logprobs of ``base + Σ weightᵢ·regᵢ``.

    Args:
        inputs: per datum, its ``loss_fn_inputs`` as arrays shaped like its logprobs
            (``target_tokens``, ``weights``, ``advantages``, ``logprobs`` = sampler logprobs,
            ``reference_logprobs``, ``paired_logprobs``, or any other key).
        logprobs: per datum, the target-token logprobs of the forward pass, ``[n]`` or
            ``[n, K]``.
        loss: the base loss: a built-in name (``"cross_entropy"``, ``"ppo"``, ...), a
            :class:`PackedLoss`, a :class:`DatumLoss` or bare Tinker-style callable
            ``fn(data, logprobs_list) -> (loss, metrics)`` written in JAX, or ``None``.
        regularizers: terms added with their weights; names must be unique.
        loss_fn_config: config of a built-in loss (e.g. PPO clip thresholds); traced.
        track_grad_norms: also compute each term's gradient norm (same program).
        norm_method: how regularizers are grouped when norms are tracked. ``"grads"``:
            every regularizer is its own term with its own ``value_and_grad``; ``"vmap"``
            (the default): regularizers of one kind (same function, static options and
            parameter shapes) share one term over their stacked parameters. Same numbers
            either way; ``"vmap"`` traces and compiles a smaller program. Without norms every
            regularizer is its own term (a ``vmap``ped group's gradient measured far slower
            on XLA:CPU).
        data: what regularizers' ``prepare`` steps receive (default: ``inputs``).
        emit: ``emit(event, measurements, metadata)`` for ``custom_loss.start/stop/exception``
            and ``regularizer.compute``.
        dtype: float32 (default) or float64 (needs ``jax.enable_x64``).
        bucketing: the padding ladder.

    Raises:
        EngineInputError: bad specs or data, found before compiling.
        NonFiniteError: a value or gradient is NaN/Inf (names the term and datum).
        RegularizerError: a ``prepare`` step failed or timed out.
        RuntimeError: ``prepare`` steps need an event loop and one is already running (use
            :func:`compute_custom_loss_async`).
    """
    if any(isinstance(r, Regularizer) and r.prepare is not None for r in regularizers):
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(
                compute_custom_loss_async(
                    inputs,
                    logprobs,
                    loss,
                    regularizers=regularizers,
                    loss_fn_config=loss_fn_config,
                    track_grad_norms=track_grad_norms,
                    norm_method=norm_method,
                    data=data,
                    emit=emit,
                    dtype=dtype,
                    bucketing=bucketing,
                )
            )
        raise RuntimeError(
            "regularizers with a prepare step cannot run synchronously inside a running "
            "event loop; await compute_custom_loss_async instead"
        )
    return _compute(
        inputs,
        logprobs,
        loss,
        regularizers=regularizers,
        loss_fn_config=loss_fn_config,
        track_grad_norms=track_grad_norms,
        norm_method=norm_method,
        emit=emit,
        dtype=dtype,
        bucketing=bucketing,
        prepared={},
    )


async def compute_custom_loss_async(
    inputs: Sequence[Mapping[str, npt.ArrayLike]],
    logprobs: Sequence[npt.ArrayLike],
    loss: LossSpec = None,
    *,
    regularizers: Sequence[Regularizer] = (),
    loss_fn_config: Mapping[str, float] | None = None,
    track_grad_norms: bool = False,
    norm_method: NormMethod = "vmap",
    data: Sequence[Any] | None = None,
    emit: EmitFn | None = None,
    dtype: npt.DTypeLike = np.float32,
    bucketing: Bucketing = _DEFAULT_BUCKETING,
) -> CustomLossResult:
    """:func:`compute_custom_loss`, awaiting ``prepare`` steps concurrently (each with its
    ``prepare_timeout``). The kernel runs as :meth:`PendingCustomLoss.run` runs it (in a
    worker thread, or inline for a small batch whose program has run before)."""
    if len(inputs) != len(logprobs):
        raise EngineInputError(
            f"got {len(inputs)} datums but {len(logprobs)} logprobs arrays; they must match"
        )
    pending = await prepare_custom_loss_async(
        inputs,
        [np.shape(lp) for lp in logprobs],
        loss,
        regularizers=regularizers,
        loss_fn_config=loss_fn_config,
        track_grad_norms=track_grad_norms,
        norm_method=norm_method,
        data=data,
        emit=emit,
        dtype=dtype,
        bucketing=bucketing,
    )
    return await pending.run(logprobs)


def lower_custom_loss(
    inputs: Sequence[Mapping[str, npt.ArrayLike]],
    logprobs: Sequence[npt.ArrayLike],
    loss: LossSpec = None,
    *,
    regularizers: Sequence[Regularizer] = (),
    loss_fn_config: Mapping[str, float] | None = None,
    track_grad_norms: bool = False,
    norm_method: NormMethod = "vmap",
    dtype: npt.DTypeLike = np.float32,
    bucketing: Bucketing = _DEFAULT_BUCKETING,
) -> jax.stages.Lowered:
    """The lowered program of a step, for ``.compile().memory_analysis()`` / ``cost_analysis()``.

    Regularizers with a ``prepare`` step are not supported here.
    """
    if any(r.prepare is not None for r in regularizers):
        raise EngineInputError("lower_custom_loss does not run prepare steps")
    step = _build_step(
        inputs,
        logprobs,
        loss,
        regularizers=regularizers,
        loss_fn_config=loss_fn_config,
        track_grad_norms=track_grad_norms,
        norm_method=norm_method,
        dtype=dtype,
        bucketing=bucketing,
        prepared={},
    )
    return program.lower(*step.args, plan=step.plan)


def _compute(
    inputs: Sequence[Mapping[str, npt.ArrayLike]],
    logprobs: Sequence[npt.ArrayLike],
    loss: LossSpec,
    *,
    regularizers: Sequence[Regularizer],
    loss_fn_config: Mapping[str, float] | None,
    track_grad_norms: bool,
    norm_method: NormMethod,
    emit: EmitFn | None,
    dtype: npt.DTypeLike,
    bucketing: Bucketing,
    prepared: Prepared,
) -> CustomLossResult:
    started = time.perf_counter()
    _emit_start(emit, regularizers, track_grad_norms)
    try:
        step = _build_step(
            inputs,
            logprobs,
            loss,
            regularizers=regularizers,
            loss_fn_config=loss_fn_config,
            track_grad_norms=track_grad_norms,
            norm_method=norm_method,
            dtype=dtype,
            bucketing=bucketing,
            prepared=prepared,
        )
        result = _finish(step)
    except Exception as exc:
        _exception(emit, exc, time.perf_counter() - started)
        raise
    _report(emit, result, time.perf_counter() - started)
    return result
