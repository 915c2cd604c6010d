"""Evaluating one loss term inside the jitted program.

A term is the base loss or a group of regularizers sharing one function ("kind"). Without
gradient norms a group of size ``n > 1`` is evaluated with ``vmap`` over its stacked
parameters, size 1 directly; with them the program evaluates one member at a time
(:mod:`tinkjax.engine._program`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from tinkjax.engine._batch import LossBatch
from tinkjax.engine._errors import EngineInputError
from tinkjax.engine._pack import DatumLayout
from tinkjax.engine._term_specs import DatumLossFn, TermFn
from tinkjax.losses import compute_elementwise_loss, get_loss_definition

Array = jax.Array
Metrics = dict[str, Array]


@dataclasses.dataclass(frozen=True)
class TermPlan:
    """Static description of a term or group (part of the compiled program's cache key).

    Attributes:
        fn: the term function.
        static_key: static options, passed as keyword arguments.
        param_names: traced parameters (stacked along a leading axis of length ``size``).
        prepared_names: traced arrays from an async ``prepare`` (size-1 groups only).
        size: number of regularizers in the group (1 for the base).
        label: name for trace-time errors (not part of the key).
    """

    fn: TermFn
    static_key: tuple[tuple[str, Hashable], ...]
    param_names: tuple[str, ...]
    prepared_names: tuple[str, ...] = ()
    size: int = 1
    label: str = dataclasses.field(default="", compare=False)


@dataclasses.dataclass(frozen=True)
class DatumPlan:
    """Static description of a Tinker-style base loss: its function and the datum layout."""

    fn: DatumLossFn
    layout: DatumLayout


class DatumArrays(dict[str, Array]):
    """Datum ``i``'s ``loss_fn_inputs`` as arrays, shaped like a ``Datum``: a Tinker-style loss
    reads ``datum.loss_fn_inputs[key]`` (the official SDK's signature) or ``datum[key]``.

    Only the loss inputs come in: the wire types (``model_input``, the tensors' wire form) stay
    outside ``jit``, so a loss cannot capture one datum's tokens as constants of a program that
    is reused for the next batch of the same shapes.
    """

    __slots__ = ()

    @property
    def loss_fn_inputs(self) -> dict[str, Array]:
        """The inputs by key (this mapping itself)."""
        return self

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(
            f"a datum inside a JAX loss has only loss_fn_inputs (arrays), not {name!r}: "
            "wire types stay outside jit; put what the loss needs in loss_fn_inputs"
        )


def _split_output(out: Any, label: str) -> tuple[Array, Metrics]:
    value, metrics = out if isinstance(out, tuple) else (out, {})
    if not isinstance(metrics, Mapping):
        raise EngineInputError(
            f"{label}: the second element of the returned tuple must be a dict of metrics, "
            f"got {type(metrics).__name__}"
        )
    value = jnp.asarray(value)
    if value.shape != ():
        raise EngineInputError(f"{label}: the value must be a scalar, got shape {value.shape}")
    checked: Metrics = {}
    for key, metric in metrics.items():
        arr = jnp.asarray(metric)
        if arr.shape != ():
            raise EngineInputError(
                f"{label}: metric {key!r} must be a scalar, got shape {arr.shape}"
            )
        checked[str(key)] = arr
    return value, checked


def eval_term(
    term: TermPlan,
    lp: Array,
    batch: LossBatch,
    params: Mapping[str, Array],
    prepared: Mapping[str, Array],
) -> tuple[Array, Metrics]:
    """One instance: ``term.fn(batch, lp, **params, **prepared, **static)``.

    The term is rematerialised (``jax.checkpoint``): its backward pass recomputes the cheap
    elementwise forward instead of keeping every intermediate alive. On XLA:CPU at 1M tokens
    and 16 regularizers this cut the temporary memory 4× and the time of value-and-grad 2×
    (``bench/engine_bench.py``).
    """

    def run(
        x: Array, batch: LossBatch, params: Mapping[str, Array], prepared: Mapping[str, Array]
    ) -> tuple[Array, Metrics]:
        out = term.fn(batch, x, **params, **prepared, **dict(term.static_key))
        value, metrics = _split_output(out, term.label)
        return value.astype(x.dtype), metrics

    result: tuple[Array, Metrics] = jax.checkpoint(run)(lp, batch, params, prepared)
    return result


def eval_datum_loss(plan: DatumPlan, lp: Array, batch: LossBatch) -> tuple[Array, Metrics]:
    """A Tinker-style loss: slice the packed arrays back into per-datum arrays (static)."""
    layout = plan.layout
    lps: list[Array] = []
    data: list[dict[str, Any]] = []
    for off, shape in zip(layout.offsets, layout.shapes, strict=True):
        lps.append(lp[off : off + shape[0]].reshape(shape))
        data.append(
            DatumArrays({key: batch.input(key)[off : off + shape[0]] for key in layout.present})
        )
    value, metrics = _split_output(plan.fn(data, lps), "base loss")
    return value.astype(lp.dtype), metrics


def group_values(
    term: TermPlan,
    lp: Array,
    batch: LossBatch,
    params: Mapping[str, Array],
    prepared: Mapping[str, Array],
) -> tuple[Array, Metrics]:
    """Values ``[n]`` and metrics ``{key: [n]}`` of a group."""
    if term.size == 1:
        value, metrics = eval_term(term, lp, batch, _first(params), prepared)
        return value[None], {k: v[None] for k, v in metrics.items()}

    def one(p: Mapping[str, Array]) -> tuple[Array, Metrics]:
        return eval_term(term, lp, batch, p, prepared)

    values, metrics = jax.vmap(one)(params)
    return values, metrics


def builtin_loss(
    batch: LossBatch, lp: Array, *, loss: str, **config: Array
) -> tuple[Array, Metrics]:
    """Tinker's built-in loss ``loss`` on the packed batch: Σ over tokens and datums, no mean.

    Uses ``tinkjax.losses``; config values are traced. Returns ``(value, {"loss:sum": value})``.
    """
    definition = get_loss_definition(loss)
    inputs = {key: batch.input(key) for key in definition.input_arguments}
    segments = batch.segment_ids
    if lp.ndim == 2:
        segments = jnp.broadcast_to(segments[:, None], lp.shape)
    per_token = compute_elementwise_loss(
        loss,
        lp,
        inputs,
        config,
        segment_ids=segments if definition.uses_segments else None,
        num_segments=batch.max_sequences if definition.uses_segments else None,
    )
    value = batch.token_sum(per_token)
    return value, {"loss:sum": value}


def _first(params: Mapping[str, Array]) -> dict[str, Array]:
    return {k: v[0] for k, v in params.items()}
