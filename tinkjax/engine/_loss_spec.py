"""The spec of a custom-loss step, built and validated once.

:class:`CustomLossSpec` holds everything about a step except its data: the base loss, the
regularizers, the loss config, whether to track gradient norms and how regularizers are
grouped for them, the float dtype and the bucketing. Its constructor is the one place where
these are checked; the engine's entry points take a spec, or build one from the same keyword
arguments (:func:`as_spec`), and every later stage reads the checked values from it.

A spec is frozen and value-hashable on what the compiled program depends on: the structure of
the base loss and of the regularizers (functions, names, parameter names, static options,
required inputs), the norm settings, the dtype and the bucketing. Weights, parameter values and
loss-config values are left out of equality and hashing, as in the term specs: they reach the
program as traced arrays, so a spec rebuilt with equal content, or with new weights only,
selects the compiled program already cached.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any, Literal, TypedDict, Unpack

import numpy as np
import numpy.typing as npt

from tinkjax.engine._errors import EngineInputError
from tinkjax.engine._pack import DEFAULT_BUCKETING, Bucketing
from tinkjax.engine._term_specs import (
    DatumLoss,
    DatumLossFn,
    PackedLoss,
    Regularizer,
    validate_regularizers,
)
from tinkjax.engine._terms import builtin_loss
from tinkjax.losses import get_loss_definition, resolve_loss_config

__all__ = ["CustomLossSpec", "LossSpec", "NormMethod", "SpecOptions", "as_spec"]

#: ``loss``: a built-in loss name, a packed-batch loss, a Tinker-style per-datum loss (a
#: :class:`DatumLoss` or a bare callable), or ``None`` for no base loss.
LossSpec = str | PackedLoss | DatumLoss | DatumLossFn | None
NormMethod = Literal["grads", "vmap"]

_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


class SpecOptions(TypedDict, total=False):
    """The keyword arguments of :class:`CustomLossSpec` (and of the entry points that build
    one); see the class for what each means."""

    regularizers: Sequence[Regularizer]
    loss_fn_config: Mapping[str, float] | None
    track_grad_norms: bool
    norm_method: NormMethod
    dtype: npt.DTypeLike
    bucketing: Bucketing


@dataclasses.dataclass(frozen=True, init=False)
class CustomLossSpec:
    """Everything about a custom-loss step but its data, checked once.

    ``CustomLossSpec(loss=None, *, regularizers=(), loss_fn_config=None,
    track_grad_norms=False, norm_method="vmap", dtype=np.float32, bucketing=Bucketing())``.

    Attributes:
        loss: the base loss: a built-in name (``"cross_entropy"``, ``"ppo"``, ...), a
            :class:`PackedLoss`, a :class:`DatumLoss` (a bare Tinker-style callable
            ``fn(data, logprobs_list) -> (loss, metrics)`` is wrapped in one), or ``None``.
        regularizers: terms added with their weights, in result order; names are unique.
        loss_fn_config: a built-in loss's config merged over its defaults (e.g. PPO's clip
            thresholds), ``{}`` for other losses; traced, so not part of equality.
        track_grad_norms: also compute each term's gradient norm (same program).
        norm_method: how regularizers are grouped when norms are tracked. ``"grads"``: every
            regularizer is its own term with its own ``value_and_grad``; ``"vmap"`` (the
            default): regularizers of one kind (same function, static options and parameter
            shapes) share one term over their stacked parameters. Same numbers either way;
            ``"vmap"`` traces and compiles a smaller program. Without norms every regularizer
            is its own term (a ``vmap``ped group's gradient measured far slower on XLA:CPU).
        dtype: float32 (default) or float64 (run it under ``jax.enable_x64``).
        bucketing: the padding ladder.
        base: the base term the program evaluates (a built-in name becomes a
            :class:`PackedLoss` over ``tinkjax.losses`` with the config as its parameters).

    Raises:
        EngineInputError: a bad loss, config, regularizer list, norm method or dtype.
        TypeError: an unknown keyword argument.
    """

    loss: str | PackedLoss | DatumLoss | None
    regularizers: tuple[Regularizer, ...]
    loss_fn_config: Mapping[str, npt.ArrayLike] = dataclasses.field(compare=False)
    track_grad_norms: bool
    norm_method: NormMethod
    dtype: np.dtype[Any]
    bucketing: Bucketing
    base: PackedLoss | DatumLoss | None = dataclasses.field(init=False, compare=False, repr=False)

    def __init__(self, loss: LossSpec = None, **options: Unpack[SpecOptions]) -> None:
        unknown = sorted(set(options) - set(SpecOptions.__annotations__))
        if unknown:
            raise TypeError(f"CustomLossSpec got unexpected keyword arguments {unknown}")
        norm_method = options.get("norm_method", "vmap")
        if norm_method not in ("grads", "vmap"):
            raise EngineInputError(f"norm_method must be 'grads' or 'vmap', got {norm_method!r}")
        bucketing = options.get("bucketing", DEFAULT_BUCKETING)
        if not isinstance(bucketing, Bucketing):
            raise EngineInputError(
                f"bucketing must be a tinkjax.engine.Bucketing, got {type(bucketing).__name__}"
            )
        loss, base, config = _resolve_base(loss, options.get("loss_fn_config"))
        fields: dict[str, Any] = {
            "loss": loss,
            "regularizers": validate_regularizers(options.get("regularizers", ())),
            "loss_fn_config": MappingProxyType(config),
            "track_grad_norms": options.get("track_grad_norms", False),
            "norm_method": norm_method,
            "dtype": _float_dtype(options.get("dtype", np.float32)),
            "bucketing": bucketing,
            "base": base,
        }
        for name, value in fields.items():
            object.__setattr__(self, name, value)

    @property
    def needs_prepare(self) -> bool:
        """Whether a regularizer has an async ``prepare`` step (the step needs a loop)."""
        return any(reg.prepare is not None for reg in self.regularizers)


def as_spec(
    spec: CustomLossSpec | LossSpec = None, **options: Unpack[SpecOptions]
) -> CustomLossSpec:
    """``spec`` itself when it is a :class:`CustomLossSpec`; else the spec whose base loss it
    is, with the other fields from ``options``: the one way the entry points get their spec.

    Raises:
        EngineInputError: a spec given together with keyword options, or a bad spec.
    """
    if isinstance(spec, CustomLossSpec):
        if options:
            raise EngineInputError(
                f"got a CustomLossSpec and the options {sorted(options)}: put them in the spec"
            )
        return spec
    return CustomLossSpec(spec, **options)


def _float_dtype(dtype: npt.DTypeLike) -> np.dtype[Any]:
    try:
        dt = np.dtype(dtype)
    except TypeError as exc:
        raise EngineInputError(f"dtype must be float32 or float64, got {dtype!r}") from exc
    if dt not in _FLOAT_DTYPES:
        raise EngineInputError(f"dtype must be float32 or float64, got {dt}")
    return dt


def _resolve_base(
    loss: LossSpec, loss_fn_config: Mapping[str, float] | None
) -> tuple[str | PackedLoss | DatumLoss | None, PackedLoss | DatumLoss | None, dict[str, Any]]:
    """``(loss, base term, resolved config)``; a bare callable becomes a :class:`DatumLoss`."""
    if isinstance(loss, str):
        try:
            definition = get_loss_definition(loss)
            config = resolve_loss_config(loss, loss_fn_config)
        except ValueError as exc:
            raise EngineInputError(str(exc)) from exc
        base = PackedLoss(
            builtin_loss, params=config, static={"loss": loss}, requires=definition.required_inputs
        )
        return loss, base, config
    if loss_fn_config:
        raise EngineInputError("loss_fn_config is only accepted with a built-in loss name")
    if loss is None or isinstance(loss, PackedLoss | DatumLoss):
        return loss, loss, {}
    if callable(loss):
        datum_loss = DatumLoss(loss)
        return datum_loss, datum_loss, {}
    raise EngineInputError(
        f"loss must be a built-in loss name, PackedLoss, DatumLoss, callable or None; "
        f"got {type(loss).__name__}"
    )
