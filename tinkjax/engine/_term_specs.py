"""Specs of the loss terms: the base loss (:class:`PackedLoss`, :class:`DatumLoss`) and the
regularizers (:class:`Regularizer`).

A term spec is value-hashable on its *structure* (function identity, parameter names, static
config, required inputs), which is what the compiled program depends on. Weights and parameter
values are excluded from equality and hashing: they enter the program as traced arrays, so a
sweep over them never recompiles. Functions must be module-level (or otherwise long-lived)
objects: a fresh closure or ``functools.partial`` per step compares unequal and recompiles.
The spec of a whole step, which holds these, is :class:`~tinkjax.engine.CustomLossSpec`.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from tinkjax.engine._errors import EngineInputError

#: ``fn(batch, logprobs, **params, **prepared, **static) -> value | (value, metrics)``.
TermFn = Callable[..., Any]
#: ``async prepare(data) -> {key: one value per datum}`` (scalars or logprob-shaped arrays).
PrepareFn = Callable[[Sequence[Any]], Awaitable[Mapping[str, Sequence[npt.ArrayLike]]]]
#: Tinker-style ``loss_fn(data, logprobs_list) -> (loss, metrics)`` over per-datum arrays.
DatumLossFn = Callable[[list[dict[str, Any]], list[Any]], Any]

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _freeze_params(owner: str, params: Mapping[str, npt.ArrayLike]) -> dict[str, np.ndarray]:
    frozen: dict[str, np.ndarray] = {}
    for key, value in params.items():
        if not isinstance(key, str) or not _IDENT.match(key):
            raise EngineInputError(f"{owner}: parameter name {key!r} is not an identifier")
        arr = np.asarray(value)
        if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.number):
            raise EngineInputError(
                f"{owner}: parameter {key!r} must be numeric, got {arr.dtype} ({value!r})"
            )
        if not np.isfinite(arr).all():
            raise EngineInputError(f"{owner}: parameter {key!r} is not finite: {value!r}")
        frozen[key] = arr.astype(np.float64)
    return frozen


def _static_key(owner: str, static: Mapping[str, Hashable]) -> tuple[tuple[str, Hashable], ...]:
    for key, value in static.items():
        try:
            hash(value)
        except TypeError as exc:
            raise EngineInputError(
                f"{owner}: static option {key!r}={value!r} is not hashable"
            ) from exc
    return tuple(sorted(static.items()))


@dataclasses.dataclass(frozen=True)
class PackedLoss:
    """A base loss written on the packed batch: ``fn(batch, logprobs, **params, **static)``.

    Attributes:
        fn: returns a scalar value, or ``(value, metrics)`` with scalar metrics.
        params: numeric parameters, traced (changing a value never recompiles).
        static: hashable options passed as Python values (changing one recompiles).
        requires: ``loss_fn_inputs`` keys the data must carry (checked before compiling).
    """

    fn: TermFn
    params: Mapping[str, npt.ArrayLike] = dataclasses.field(
        default_factory=dict, compare=False, hash=False
    )
    static: Mapping[str, Hashable] = dataclasses.field(
        default_factory=dict, compare=False, hash=False
    )
    requires: tuple[str, ...] = ()
    param_names: tuple[str, ...] = dataclasses.field(init=False)
    static_key: tuple[tuple[str, Hashable], ...] = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        owner = f"base loss {getattr(self.fn, '__name__', self.fn)!r}"
        _init_term(self, owner)

    @property
    def label(self) -> str:
        """Name used in errors and events."""
        return "base"


@dataclasses.dataclass(frozen=True)
class DatumLoss:
    """A Tinker-style base loss over per-datum arrays, written in JAX.

    ``fn(data, logprobs_list) -> loss | (loss, metrics)``: ``data[i]`` maps each
    ``loss_fn_inputs`` key the data carried to datum ``i``'s array, and ``logprobs_list[i]``
    has datum ``i``'s logprobs shape. Slicing the packed arrays per datum needs static offsets,
    so the program is compiled once per distinct *list of datum shapes* (not per bucket):
    prefer :class:`PackedLoss` for streams of ragged batches.
    """

    fn: DatumLossFn

    @property
    def label(self) -> str:
        """Name used in errors and events."""
        return "base"


@dataclasses.dataclass(frozen=True)
class Regularizer:
    """A named, weighted term ``weight · fn(batch, logprobs, **params, **prepared, **static)``.

    Attributes:
        name: unique within one call; names the term in results, events and errors.
        fn: module-level function returning a scalar, or ``(value, metrics)``.
        weight: finite float; negative weights make the term a bonus. Traced.
        params: numeric parameters (name → float or array), traced.
        static: hashable options passed as Python values (part of the compiled program).
        requires: ``loss_fn_inputs`` keys the data must carry (e.g. ``reference_logprobs``).
        prepare: optional ``async prepare(data)`` awaited before the program runs (I/O such as a
            reward model); it returns ``{key: one value per datum}``, each value a scalar
            (→ ``[B]`` per-sequence array) or an array shaped like the datum's logprobs
            (→ token-shaped), passed to ``fn`` as keyword arguments.
        prepare_timeout: seconds allowed for ``prepare``.
    """

    name: str
    fn: TermFn
    weight: float = dataclasses.field(default=1.0, compare=False)
    params: Mapping[str, npt.ArrayLike] = dataclasses.field(
        default_factory=dict, compare=False, hash=False
    )
    static: Mapping[str, Hashable] = dataclasses.field(
        default_factory=dict, compare=False, hash=False
    )
    requires: tuple[str, ...] = ()
    prepare: PrepareFn | None = None
    prepare_timeout: float = dataclasses.field(default=30.0, compare=False)
    param_names: tuple[str, ...] = dataclasses.field(init=False)
    static_key: tuple[tuple[str, Hashable], ...] = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise EngineInputError(f"regularizer name must be a non-empty str, got {self.name!r}")
        owner = f"regularizer {self.name!r}"
        if isinstance(self.weight, bool) or not isinstance(self.weight, int | float | np.number):
            raise EngineInputError(f"{owner}: weight must be a float, got {self.weight!r}")
        if not math.isfinite(float(self.weight)):
            raise EngineInputError(f"{owner}: weight must be finite, got {self.weight!r}")
        object.__setattr__(self, "weight", float(self.weight))
        if not (self.prepare_timeout > 0):
            raise EngineInputError(
                f"{owner}: prepare_timeout must be > 0, got {self.prepare_timeout!r}"
            )
        _init_term(self, owner)

    @property
    def label(self) -> str:
        """Name used in errors and events."""
        return self.name

    def with_weight(self, weight: float) -> Regularizer:
        """The same regularizer with another weight (same compiled program)."""
        return dataclasses.replace(self, weight=weight)

    def with_params(self, **params: npt.ArrayLike) -> Regularizer:
        """The same regularizer with new values for existing parameters (no recompile)."""
        unknown = sorted(set(params) - set(self.param_names))
        if unknown:
            raise EngineInputError(
                f"regularizer {self.name!r}: unknown parameters {unknown}; "
                f"it has {list(self.param_names)}"
            )
        return dataclasses.replace(self, params={**self.params, **params})


def _init_term(term: PackedLoss | Regularizer, owner: str) -> None:
    if not callable(term.fn):
        raise EngineInputError(f"{owner}: fn must be callable, got {term.fn!r}")
    params = _freeze_params(owner, term.params)
    static_key = _static_key(owner, term.static)
    clash = sorted(set(params) & {k for k, _ in static_key})
    if clash:
        raise EngineInputError(f"{owner}: {clash} are both params and static options")
    if not all(isinstance(r, str) for r in term.requires):
        raise EngineInputError(f"{owner}: requires must be a tuple of str, got {term.requires!r}")
    object.__setattr__(term, "params", params)
    object.__setattr__(term, "param_names", tuple(sorted(params)))
    object.__setattr__(term, "static_key", static_key)
    object.__setattr__(term, "requires", tuple(term.requires))


def validate_regularizers(regularizers: Sequence[Regularizer]) -> tuple[Regularizer, ...]:
    """Check types and unique names; returns the regularizers as a tuple."""
    seen: set[str] = set()
    for i, reg in enumerate(regularizers):
        if not isinstance(reg, Regularizer):
            raise EngineInputError(
                f"regularizers[{i}] must be a tinkjax.engine.Regularizer, got {type(reg).__name__}"
            )
        if reg.name in seen:
            raise EngineInputError(f"duplicate regularizer name {reg.name!r}")
        seen.add(reg.name)
    return tuple(regularizers)
