"""The events of a custom-loss step, sent through the caller's ``emit``.

A step is a span: ``custom_loss.start`` when it begins (before its spec is built from keyword
options, so a bad option ends the span too), then one ``regularizer.compute`` per regularizer
and ``custom_loss.stop``, or ``custom_loss.exception``. Telemetry never breaks a step: an
exception raised by ``emit`` is logged and dropped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from tinkjax.engine._loss_spec import CustomLossSpec, LossSpec, SpecOptions, as_spec
from tinkjax.engine._result import CustomLossResult

__all__ = ["EmitFn", "emit_exception", "emit_stop", "open_span"]

logger = logging.getLogger("tinkjax.engine")

#: ``emit(event_name, measurements, metadata)``; exceptions it raises are logged, not raised.
EmitFn = Callable[[str, dict[str, float], dict[str, Any]], None]


def _emit(
    emit: EmitFn | None, name: str, measurements: dict[str, float], metadata: dict[str, Any]
) -> None:
    if emit is None:
        return
    try:
        emit(name, measurements, metadata)
    except Exception:  # telemetry never breaks a step
        logger.warning("event handler failed on %s", name, exc_info=True)


def open_span(
    emit: EmitFn | None, spec: CustomLossSpec | LossSpec, options: SpecOptions
) -> tuple[CustomLossSpec, float]:
    """Emit ``custom_loss.start`` and build the step's spec (:func:`as_spec`); returns the
    spec and the span's start time (``time.perf_counter()``).

    Raises:
        EngineInputError: a bad spec (after ``custom_loss.exception``).
    """
    started = time.perf_counter()
    if isinstance(spec, CustomLossSpec):
        count, track = len(spec.regularizers), spec.track_grad_norms
    else:
        count = len(options.get("regularizers", ()))
        track = options.get("track_grad_norms", False)
    _emit(
        emit,
        "custom_loss.start",
        {"system_time": time.time()},
        {"regularizer_count": count, "track_grad_norms": track},
    )
    try:
        built = as_spec(spec, **options)
    except Exception as exc:
        emit_exception(emit, exc, time.perf_counter() - started)
        raise
    return built, started


def emit_stop(emit: EmitFn | None, result: CustomLossResult, duration: float) -> None:
    """``regularizer.compute`` per regularizer, then ``custom_loss.stop``."""
    for reg in result.regularizers.values():
        measurements = {"value": reg.value, "contribution": reg.contribution}
        if reg.grad_norm is not None:
            measurements["grad_norm"] = reg.grad_norm
        _emit(
            emit,
            "regularizer.compute",
            measurements,
            {"regularizer_name": reg.name, "weight": reg.weight},
        )
    _emit(
        emit,
        "custom_loss.stop",
        {
            "duration": duration,
            "loss_total": result.loss_total,
            "regularizer_total": result.regularizer_total,
        },
        {"regularizer_count": len(result.regularizers)},
    )


def emit_exception(emit: EmitFn | None, exc: BaseException, duration: float) -> None:
    """``custom_loss.exception``, with the error's ``term``/``datum``/``name`` when it has them."""
    metadata: dict[str, Any] = {"reason": type(exc).__name__, "message": str(exc)}
    for attr in ("term", "datum", "name"):
        if hasattr(exc, attr):
            metadata[attr] = getattr(exc, attr)
    _emit(emit, "custom_loss.exception", {"duration": duration}, metadata)
