"""Server-side custom losses in the runtime: datum checks and the per-datum loss step.

A custom loss (a :class:`~tinkjax.losses.LossGraph`) is per datum: it sees the datum's
logprobs at the datum's own shape (``[T]`` or ``[T, K]``, never padded) and inputs of any shape
of their declared rank. Tracing it into the fused program would make every new set of datum
shapes a new compile of the whole model (about 18 s for ``bytelm-micro`` on a 2-core CPU,
measured), so the pass is split at the logprobs instead, still with one forward:

1. ``logprobs_vjp`` (compiled per shape bucket, like the built-in losses): the padded
   logprobs and the VJP of the model (its saved activations);
2. :func:`row_losses`: per datum, the graph's loss and its gradient in the logprobs, by JAX
   autodiff of the graph interpreted under ``jit`` (a small program compiled once per graph
   and datum shape);
3. ``vjp_backward`` (per bucket): those gradients pulled back into the LoRA gradient.

The row's scalar loss is placed at the first position of its per-token loss array, so
``loss:sum`` is the sum of the per-datum losses.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import numpy as np

from tinkjax.losses import LossGraph, LossGraphError
from tinkjax.models._types import DatumArrays, ValidDatum

__all__ = ["custom_metrics", "row_losses", "validate_custom_datum"]


@functools.partial(jax.jit, static_argnums=0)
def _loss_grad(
    graph: LossGraph, logprobs: jax.Array, inputs: list[jax.Array]
) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
    """One datum's ``(loss, d loss / d logprobs, metrics)``."""

    def loss_of(lp: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        return graph.evaluate(lp, inputs)

    (loss, metrics), grad = jax.value_and_grad(loss_of, has_aux=True)(logprobs)
    return loss, grad, metrics


def row_losses(
    graph: LossGraph, logprobs: np.ndarray, datums: Sequence[ValidDatum]
) -> tuple[np.ndarray, np.ndarray]:
    """Per-token losses and the cotangent of a padded batch.

    Args:
        logprobs: ``[B, T, K]`` padded logprobs (rows ``>= len(datums)`` are padding).

    Returns:
        ``(elementwise, cotangent)``, both ``[B, T, K]`` of ``logprobs``' dtype: row ``r``'s
        loss at ``[r, 0, 0]``; its gradient in the logprobs over the datum's own positions,
        zero on padding.
    """
    elementwise = np.zeros_like(logprobs)
    cotangent = np.zeros_like(logprobs)
    for r, datum in enumerate(datums):
        n, k = datum.targets.shape
        lp = logprobs[r, :n, :k]
        lp = lp[:, 0] if datum.one_dim else lp
        loss, grad, _ = _loss_grad(graph, lp, [datum.inputs[name] for name in graph.input_names])
        elementwise[r, 0, 0] = np.asarray(loss)
        cotangent[r, :n, :k] = np.asarray(grad).reshape(n, k)
    return elementwise, cotangent


def _tokens(values: np.ndarray, field: str, vocab: int) -> np.ndarray:
    if values.dtype.kind not in "iu":
        raise ValueError(f"{field}: expected integer tokens, got dtype {values.dtype}")
    bad = (values < 0) | (values >= vocab)
    if bad.any():
        raise ValueError(f"{field}: token {int(values[bad][0])} outside [0, {vocab})")
    return values.astype(np.int32)


def validate_custom_datum(
    datum: DatumArrays,
    graph: LossGraph,
    *,
    where: str,
    vocab: int,
    max_len: int,
    dtype: np.dtype,
) -> ValidDatum:
    """Checks one datum for custom loss ``graph``: tokens as for every loss, each input the
    graph reads present, numeric, finite and of its declared rank, and the graph run on these
    shapes (abstractly: nothing is computed) giving a scalar loss and scalar metrics.

    Raises:
        ValueError: naming the field (prefixed by ``where``) or the graph node that fails.
    """
    tokens = _tokens(np.asarray(datum.input_tokens), f"{where}.input_tokens", vocab)
    n = tokens.shape[0] if tokens.ndim == 1 else 0
    if n == 0:
        raise ValueError(
            f"{where}.input_tokens: expected a non-empty 1-D array, got {tokens.shape}"
        )
    if n > max_len:
        raise ValueError(f"{where}.input_tokens: length {n} exceeds max_seq_len {max_len}")
    if "target_tokens" not in datum.loss_fn_inputs:
        raise ValueError(f"{where}.loss_fn_inputs: a custom loss needs 'target_tokens'")
    field = f"{where}.loss_fn_inputs['target_tokens']"
    targets = _tokens(np.asarray(datum.loss_fn_inputs["target_tokens"]), field, vocab)
    if targets.ndim not in (1, 2) or targets.shape[0] != n or 0 in targets.shape:
        raise ValueError(f"{field}: shape {targets.shape} must be [{n}] or [{n}, K]")
    rank = graph.inputs[0][1]
    if targets.ndim != rank:
        raise ValueError(
            f"{field}: rank {targets.ndim}, but loss {graph.name!r} declared logprobs with rank "
            f"{rank}"
        )
    inputs = {}
    for name, declared in graph.inputs[1:]:
        field = f"{where}.loss_fn_inputs[{name!r}]"
        if name not in datum.loss_fn_inputs:
            raise ValueError(f"{field}: missing; loss {graph.name!r} reads it")
        values = np.asarray(datum.loss_fn_inputs[name])
        if declared == 0 and values.shape == (1,):
            values = values.reshape(())  # protobuf has no rank 0: a scalar arrives as [1]
        if values.ndim != declared:
            raise ValueError(
                f"{field}: rank {values.ndim} (shape {values.shape}), but loss {graph.name!r} "
                f"declared rank {declared}"
            )
        if values.dtype.kind not in "fiub":
            raise ValueError(f"{field}: expected numbers, got dtype {values.dtype}")
        if not np.all(np.isfinite(values)):
            raise ValueError(f"{field}: contains non-finite values")
        inputs[name] = values.astype(dtype)
    one_dim = targets.ndim == 1
    shapes = tuple(inputs[name].shape for name in graph.input_names)
    try:
        _check_shapes(graph, targets.shape, shapes, dtype)
    except LossGraphError as exc:
        raise ValueError(f"{where}: {exc}") from None
    return ValidDatum(tokens, targets[:, None] if one_dim else targets, inputs, one_dim)


@functools.lru_cache(maxsize=4096)
def _check_shapes(
    graph: LossGraph,
    lp_shape: tuple[int, ...],
    shapes: tuple[tuple[int, ...], ...],
    dtype: np.dtype,
) -> None:
    """Traces ``graph`` on these shapes (``jax.eval_shape``: no computation, no allocation)."""
    jax.eval_shape(
        graph.evaluate,
        jax.ShapeDtypeStruct(lp_shape, dtype),  # type: ignore[no-untyped-call]
        [jax.ShapeDtypeStruct(s, dtype) for s in shapes],  # type: ignore[no-untyped-call]
    )


def custom_metrics(
    graph: LossGraph, datums: Sequence[ValidDatum], logprobs: Sequence[np.ndarray]
) -> dict[str, float]:
    """The loss's own metrics over a request: each ``custom/<name>:sum`` summed over the
    datums, each ``:mean`` averaged, from the logprobs the pass returned (the programs of
    :func:`row_losses`, already compiled for these shapes)."""
    if not graph.metric_keys:
        return {}
    sums = dict.fromkeys(graph.metric_keys, 0.0)
    for datum, lp in zip(datums, logprobs, strict=True):
        _, _, metrics = _loss_grad(graph, lp, [datum.inputs[name] for name in graph.input_names])
        for key, value in metrics.items():
            sums[key] += float(value)
    return {k: v / len(datums) if k.endswith(":mean") else v for k, v in sums.items()}
