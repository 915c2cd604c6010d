"""``TrainingClient.forward_backward_custom``: the engine wired into training.

The linearisation trick (``../shared/DESIGN.md``): for a loss ``C(logprobs)`` that the server
cannot compute,

1. a forward-only ``cross_entropy`` pass returns every datum's target-token logprobs;
2. the engine computes ``C = base + Σ wᵢ·regᵢ``, its per-term breakdown and ``g = ∂C/∂logprobs``
   in one compiled program;
3. a second ``cross_entropy`` pass over the same chunks with ``weights = −g`` accumulates
   ``∂C/∂θ`` on the server (its loss ``Σ −lp·w = Σ lp·g`` has that parameter gradient).

Each datum's model input and target tokens are encoded once for both passes when the
session's wire can (:meth:`tinkjax.codec.Wire.pre_encode`: protobuf, 1-D target tokens);
otherwise (JSON wire mode, 2-D target tokens) each pass sends ``Datum`` objects. While the
server runs the forward pass the engine prepares everything that needs no logprobs
(:func:`~tinkjax.engine.prepare_custom_loss_async`: async regularizers' I/O,
packing, planning).

The ``2N`` sequence ids of both passes are reserved when the call is made, so an ``optim_step``
issued afterwards is ordered after the backward pass. When the engine fails (a non-finite value
or gradient, a failing regularizer, bad input) no backward request is sent: the reserved
backward ids are consumed by one-token *forward-only* requests, which accumulate nothing, so the
model's queue does not stall on a gap; then the error is raised.

A bare callable in the official SDK's signature ``loss_fn(data, logprobs_list) -> (loss,
metrics)`` is written in JAX or in torch (:func:`~._torch_loss.loss_style` tells which): a JAX
loss is the engine's :class:`~tinkjax.engine.DatumLoss` (its datums are shaped like ``Datum``,
``datum.loss_fn_inputs[key]`` an array); a torch loss runs between the two passes as in the
official SDK (:func:`~._torch_loss.run_torch_loss`), on a worker thread.

Everything goes through the model's :class:`~._queue.ModelQueue` (reservation, chunk limits,
ordered sending); nothing here knows the wire mode.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Unpack

import numpy as np
import numpy.typing as npt

from tinkjax import events
from tinkjax.codec import EncodedBatch, WeightedChunk
from tinkjax.engine import (
    CustomLossResult,
    CustomLossSpec,
    DatumLoss,
    LossSpec,
    PackedLoss,
    SpecOptions,
    as_spec,
    prepare_custom_loss_async,
)
from tinkjax.errors import EngineInputError
from tinkjax.types import Datum, ForwardBackwardOutput, TensorData

from ._chunking import combine_outputs, split_by_counts
from ._custom_result import SURROGATE_METRIC, CustomForwardBackwardOutput
from ._queue import ModelQueue
from ._term_table import BUILTIN_LOSS_REDUCTION, describe_reduction
from ._torch_loss import loss_style, run_torch_loss

__all__ = ["DatumChunks", "EncodedChunks", "forward_backward_custom_async_impl", "plan_passes"]


def _as_datum(item: Any, index: int) -> Datum:
    if not isinstance(item, Datum):
        raise EngineInputError(f"data[{index}]: expected a tinkjax.types.Datum, got {item!r:.80}")
    if "target_tokens" not in item.loss_fn_inputs:
        raise EngineInputError(
            f"data[{index}].loss_fn_inputs: forward_backward_custom needs 'target_tokens' "
            f"(got keys {sorted(item.loss_fn_inputs)})"
        )
    return item


def _with_weights(datum: Datum, weights: TensorData) -> Datum:
    """The datum as a pass sends it: model input, ``target_tokens``, these ``weights`` and
    its provenance spans."""
    return Datum(
        model_input=datum.model_input,
        loss_fn_inputs={"target_tokens": datum.loss_fn_inputs["target_tokens"], "weights": weights},
        model_input_spans=datum.model_input_spans,
        loss_fn_input_spans=datum.loss_fn_input_spans,
    )


class DatumChunks:
    """Both passes as :class:`Datum` chunks: the general route (JSON wire mode, 2-D target
    tokens, whose ``weights`` may travel as CSR)."""

    def __init__(
        self, queue: ModelQueue, datums: list[Datum], shapes: list[tuple[int, ...]]
    ) -> None:
        self.datums = datums
        self.shapes = shapes
        zeros = [TensorData.from_numpy(np.zeros(shape, np.float32)) for shape in shapes]
        self.forward = queue.chunk(
            [_with_weights(d, z) for d, z in zip(datums, zeros, strict=True)]
        )
        self.counts = [len(c) for c in self.forward]

    def backward(self, gradients: Sequence[npt.NDArray[Any]]) -> list[list[Datum]]:
        data = []
        for datum, grad in zip(self.datums, gradients, strict=True):
            weights = (-np.asarray(grad)).astype(np.float32)
            tensor = (
                TensorData.from_numpy_sparse(weights)
                if weights.ndim == 2
                else TensorData.from_numpy(weights)
            )
            data.append(_with_weights(datum, tensor))
        return split_by_counts(data, self.counts)  # the forward pass's chunk boundaries


class EncodedChunks:
    """Both passes from one encoding of each datum (model input and ``target_tokens``, by the
    wire): the forward pass completes it with zero weights, the backward pass with ``−grad``,
    sliced from one array. The common route (protobuf wire, 1-D target tokens): no per-pass
    :class:`Datum` objects and no second encoding of the tokens."""

    def __init__(
        self, queue: ModelQueue, batch: EncodedBatch, shapes: list[tuple[int, ...]]
    ) -> None:
        self.shapes = shapes
        self.batch = batch
        self.counts = queue.chunk_counts(batch.sizes)
        self.forward = batch.chunks(self.counts, np.zeros(sum(batch.lengths), np.float32))

    def backward(self, gradients: Sequence[npt.NDArray[Any]]) -> list[WeightedChunk]:
        flat = np.concatenate(gradients) if len(gradients) > 1 else np.asarray(gradients[0])
        return self.batch.chunks(self.counts, np.negative(flat, dtype=np.float32))


def plan_passes(queue: ModelQueue, datums: list[Datum]) -> DatumChunks | EncodedChunks:
    """The route of both passes, with every datum's logprobs shape (its target tokens')."""
    shapes = [d.loss_fn_inputs["target_tokens"].dense_shape for d in datums]
    batch = queue.session.wire.pre_encode(datums)
    if batch is None:
        return DatumChunks(queue, datums, shapes)
    return EncodedChunks(queue, batch, shapes)


def _retrieve(task: asyncio.Future[Any]) -> None:
    """Mark a task's exception as retrieved (no "never retrieved" warning)."""
    if not task.cancelled():
        task.exception()


def _emitter(model_id: str) -> Callable[[str, dict[str, float], dict[str, Any]], None]:
    """Engine events (``custom_loss.start|stop|exception``, ``regularizer.compute``) go out
    as ``tinkjax.<name>`` through :mod:`tinkjax.events`, tagged with the model id."""

    def emit(name: str, measurements: dict[str, float], metadata: dict[str, Any]) -> None:
        events.emit(f"tinkjax.{name}", measurements, {**metadata, "model_id": model_id})

    return emit


class _EngineLoss:
    """The loss as the engine runs it: prepared while the forward pass runs, then compiled."""

    def __init__(self, spec: CustomLossSpec, model_id: str) -> None:
        self.spec = spec
        self.model_id = model_id
        self.pending: Any = None

    async def prepare(self, datums: list[Datum], shapes: list[tuple[int, ...]]) -> None:
        inputs = [{k: v.to_numpy() for k, v in d.loss_fn_inputs.items()} for d in datums]
        self.pending = await prepare_custom_loss_async(
            inputs, shapes, self.spec, data=datums, emit=_emitter(self.model_id)
        )

    def abandon(self, exc: BaseException) -> None:
        self.pending.abandon(exc)

    async def run(self, logprobs: list[npt.NDArray[Any]]) -> CustomLossResult:
        result: CustomLossResult = await self.pending.run(logprobs)
        return result


class _TorchLoss:
    """A torch loss in the official SDK's signature, run on a worker thread."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.datums: list[Datum] = []

    async def prepare(self, datums: list[Datum], shapes: list[tuple[int, ...]]) -> None:
        self.datums = datums

    def abandon(self, exc: BaseException) -> None:
        pass

    async def run(self, logprobs: list[npt.NDArray[Any]]) -> CustomLossResult:
        out = await asyncio.to_thread(run_torch_loss, self.fn, self.datums, logprobs)
        norm = math.sqrt(sum(float(np.vdot(g, g)) for g in out.gradients))
        return CustomLossResult(
            loss_total=out.loss_total,
            base_loss=out.loss_total,
            base_grad_norm=None,
            regularizer_total=0.0,
            regularizers={},
            total_grad_norm=norm,
            metrics=out.metrics,
            gradients=list(out.gradients),
        )


def _torch_loss_of(spec: Any, options: SpecOptions) -> Callable[..., Any] | None:
    """``spec`` when it is a bare callable written in torch (:func:`loss_style`), else ``None``.

    Raises:
        EngineInputError: a torch loss given with engine options (those run in JAX).
    """
    if isinstance(spec, str | CustomLossSpec | PackedLoss | DatumLoss) or not callable(spec):
        return None
    if loss_style(spec) != "torch":
        return None
    fn: Callable[..., Any] = spec
    if options:
        raise EngineInputError(
            f"loss_fn is written in torch; the engine options {sorted(options)} (regularizers, "
            "norms, dtype, ...) apply to JAX losses only"
        )
    return fn


def forward_backward_custom_async_impl(
    queue: ModelQueue,
    data: Sequence[Datum],
    spec: CustomLossSpec | LossSpec,
    **options: Unpack[SpecOptions],
) -> Coroutine[Any, Any, CustomForwardBackwardOutput]:
    """Forward pass → loss → backward pass with ``weights = −∂C/∂logprobs``.

    See :meth:`~tinkjax.client.TrainingClient.forward_backward_custom` for the arguments:
    ``spec`` is a :class:`~tinkjax.engine.CustomLossSpec`, or the base loss of the spec that
    ``options`` build (:func:`~tinkjax.engine.as_spec`), or a torch loss in the official
    signature. The spec and the data are checked, the data chunked and the ``2N`` sequence ids
    reserved *now*, at call time (so a call made after this one, e.g. ``optim_step``, is
    ordered after both passes, and a bad spec raises here, before any request); the returned
    coroutine does the rest.
    """
    torch_fn = _torch_loss_of(spec, options)
    loss: _EngineLoss | _TorchLoss = (
        _TorchLoss(torch_fn)
        if torch_fn is not None
        else _EngineLoss(as_spec(spec, **options), queue.model_id)
    )
    datums = [_as_datum(d, i) for i, d in enumerate(data)]
    if not datums:
        raise EngineInputError("data: forward_backward_custom needs at least one datum")
    plan = plan_passes(queue, datums)
    n = len(plan.forward)
    ids = queue.reserve(2 * n)
    return _run(queue, datums, plan, ids[:n], ids[n:], loss)


async def _run(
    queue: ModelQueue,
    datums: list[Datum],
    plan: DatumChunks | EncodedChunks,
    forward_ids: list[int],
    backward_ids: list[int],
    loss: _EngineLoss | _TorchLoss,
) -> CustomForwardBackwardOutput:
    forward_task = asyncio.ensure_future(
        queue.send_fwdbwd(
            plan.forward,
            forward_ids,
            loss_fn="cross_entropy",
            loss_fn_config=None,
            forward_only=True,
        )
    )
    # Let the forward request go out first; the engine then prepares everything but the
    # logprobs (and awaits async regularizers) while the server runs the forward pass.
    await asyncio.sleep(0)
    try:
        await loss.prepare(datums, plan.shapes)
    except BaseException:
        forward_task.add_done_callback(_retrieve)  # its outcome no longer matters
        await queue.release(backward_ids)
        raise
    try:
        forward = await forward_task
        outputs = [out for chunk in forward for out in chunk.loss_fn_outputs]
        if len(outputs) != len(datums):
            raise EngineInputError(
                f"forward pass returned {len(outputs)} outputs for {len(datums)} datums"
            )
    except BaseException as exc:
        loss.abandon(exc)
        await queue.release(backward_ids)
        raise
    try:
        result = await loss.run([out["logprobs"].to_numpy() for out in outputs])
    except BaseException:
        await queue.release(backward_ids)
        raise
    backward_chunks = plan.backward(result.gradients)
    backward = await queue.send_fwdbwd(
        backward_chunks, backward_ids, loss_fn="cross_entropy", loss_fn_config=None,
        forward_only=False,
    )  # fmt: skip
    combined: ForwardBackwardOutput = combine_outputs(backward)
    metrics = dict(combined.metrics)
    if "loss:sum" in metrics:
        metrics[SURROGATE_METRIC] = metrics.pop("loss:sum")
    metrics.update(result.metrics)
    metrics["loss:sum"] = result.loss_total
    return CustomForwardBackwardOutput(
        loss_fn_output_type=combined.loss_fn_output_type,
        loss_fn_outputs=list(combined.loss_fn_outputs),
        metrics=metrics,
        breakdown=result,
        **(
            _labels(loss.spec)
            if isinstance(loss, _EngineLoss)
            else {
                "base_name": getattr(loss.fn, "__name__", "base"),
                "reductions": {"base": "its own"},
            }
        ),
    )


def _labels(spec: CustomLossSpec) -> dict[str, Any]:
    """The base loss's name and every term's reduction, for ``summary()``."""
    builtin = isinstance(spec.loss, str)
    fn = getattr(spec.loss, "fn", None)
    name = spec.loss if isinstance(spec.loss, str) else getattr(fn, "__name__", None)
    reductions = {"base": BUILTIN_LOSS_REDUCTION if builtin else "its own"}
    reductions.update({r.name: describe_reduction(r.fn, r.static) for r in spec.regularizers})
    return {"base_name": str(name or "base"), "reductions": reductions}
