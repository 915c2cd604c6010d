"""Host side of a custom-loss step: validate, pack, prepare, run the program, check, report.

Public entry points: :func:`compute_custom_loss` and :func:`compute_custom_loss_async` take
the original datums' ``loss_fn_inputs`` as NumPy arrays and the per-datum target-token
logprobs of a forward pass, and return a :class:`CustomLossResult` whose ``gradients`` are
∂loss_total/∂logprobs per datum. Nothing here does I/O except awaiting regularizers'
``prepare`` steps.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import jax
import numpy as np
import numpy.typing as npt

from tinkjax.engine._errors import EngineInputError, NonFiniteError, RegularizerError
from tinkjax.engine._kernel import Plan, fetch, program
from tinkjax.engine._pack import (
    Bucketing,
    PackedBatch,
    PackedInputs,
    checked_logprobs,
    pack_batch,
    pack_per_datum,
)
from tinkjax.engine._result import CustomLossResult, RegularizerOutput, as_floats
from tinkjax.engine._spec import DatumLoss, DatumLossFn, PackedLoss, Regularizer
from tinkjax.engine._spec import validate_regularizers as _validate_regularizers
from tinkjax.engine._terms import DatumPlan, TermPlan, builtin_loss
from tinkjax.losses import get_loss_definition, resolve_loss_config

logger = logging.getLogger("tinkjax.engine")

#: ``loss``: a built-in loss name, a packed-batch loss, a Tinker-style per-datum loss (a
#: :class:`DatumLoss` or a bare callable), or ``None`` for no base loss.
LossSpec = str | PackedLoss | DatumLoss | DatumLossFn | None
#: ``emit(event_name, measurements, metadata)``; exceptions it raises are logged, not raised.
EmitFn = Callable[[str, dict[str, float], dict[str, Any]], None]
NormMethod = Literal["grads", "vmap"]
Prepared = dict[str, Mapping[str, Sequence[npt.ArrayLike]]]

_DEFAULT_BUCKETING = Bucketing()


@dataclasses.dataclass(frozen=True)
class _Step:
    """A step ready to run: the static plan, the arguments, and how to read the outputs."""

    plan: Plan
    args: tuple[Any, ...]
    packed: PackedInputs
    regularizers: tuple[Regularizer, ...]
    slots: tuple[tuple[int, int], ...]  # regularizer i -> (group, index in group)
    dtype: np.dtype[Any]

    def run(self, plan: Plan | None = None) -> dict[str, Any]:
        plan = plan or self.plan
        return fetch(program(*self.args, plan=plan), plan, self.dtype)

    @property
    def shape_key(self) -> tuple[Any, ...]:
        """What, besides parameter shapes, selects the compiled executable of this step."""
        return (
            self.plan,
            self.dtype,
            self.packed.logprobs.shape,  # the token arrays' shape
            self.packed.batch.seq_valid.shape,  # the sequence bucket
            self.packed.layout.present,
        )


def _emit(
    emit: EmitFn | None, name: str, measurements: dict[str, float], metadata: dict[str, Any]
) -> None:
    if emit is None:
        return
    try:
        emit(name, measurements, metadata)
    except Exception:  # telemetry never breaks a step
        logger.warning("event handler failed on %s", name, exc_info=True)


def _check_dtype(dtype: npt.DTypeLike) -> np.dtype[Any]:
    dt = np.dtype(dtype)
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise EngineInputError(f"dtype must be float32 or float64, got {dt}")
    if jax.dtypes.canonicalize_dtype(dt) != dt:
        raise EngineInputError(
            "dtype float64 needs 64-bit JAX: run under `with jax.enable_x64(True):`"
        )
    return dt


def _resolve_base(
    loss: LossSpec, loss_fn_config: Mapping[str, float] | None
) -> tuple[PackedLoss | DatumLoss | None, tuple[str, ...]]:
    if isinstance(loss, str):
        try:
            definition = get_loss_definition(loss)
            config = resolve_loss_config(loss, loss_fn_config)
        except ValueError as exc:
            raise EngineInputError(str(exc)) from exc
        spec = PackedLoss(builtin_loss, params=config, static={"loss": loss})
        return spec, definition.required_inputs
    if loss_fn_config:
        raise EngineInputError("loss_fn_config is only accepted with a built-in loss name")
    if loss is None or isinstance(loss, PackedLoss | DatumLoss):
        return loss, loss.requires if isinstance(loss, PackedLoss) else ()
    if callable(loss):
        return DatumLoss(loss), ()
    raise EngineInputError(
        f"loss must be a built-in loss name, PackedLoss, DatumLoss, callable or None; "
        f"got {type(loss).__name__}"
    )


def _check_requires(label: str, requires: Sequence[str], present: Sequence[str]) -> None:
    missing = [key for key in requires if key not in present]
    if missing:
        raise EngineInputError(
            f"{label} requires loss inputs {missing}, which the data does not carry "
            f"(it has {list(present)})"
        )


@dataclasses.dataclass(frozen=True)
class _Template:
    """A step without its logprobs: the plan and every other argument, ready for them."""

    plan: Plan
    packed: PackedBatch
    args: tuple[Any, ...]  # the program's arguments after the logprobs
    regularizers: tuple[Regularizer, ...]
    slots: tuple[tuple[int, int], ...]
    dtype: np.dtype[Any]

    def step(self, logprobs: Sequence[npt.ArrayLike]) -> _Step:
        """The step with these per-datum logprobs (checked against the layout)."""
        return self._step(self.packed.with_logprobs(logprobs))

    def _step(self, packed: PackedInputs) -> _Step:
        return _Step(
            self.plan,
            (packed.logprobs, *self.args),
            packed,
            self.regularizers,
            self.slots,
            self.dtype,
        )


def _build_step(
    inputs: Sequence[Mapping[str, npt.ArrayLike]],
    logprobs: Sequence[npt.ArrayLike],
    loss: LossSpec,
    **kwargs: Any,
) -> _Step:
    """Validate, pack and plan a step (see :func:`_build_template` for the keywords)."""
    dt = _check_dtype(kwargs["dtype"])
    lps = checked_logprobs(inputs, logprobs)
    template = _build_template(inputs, [lp.shape for lp in lps], loss, **{**kwargs, "dtype": dt})
    return template._step(template.packed._with_checked(lps))


def _build_template(
    inputs: Sequence[Mapping[str, npt.ArrayLike]],
    shapes: Sequence[tuple[int, ...]],
    loss: LossSpec,
    *,
    regularizers: Sequence[Regularizer],
    loss_fn_config: Mapping[str, float] | None,
    track_grad_norms: bool,
    norm_method: NormMethod,
    dtype: npt.DTypeLike,
    bucketing: Bucketing,
    prepared: Prepared,
) -> _Template:
    dt = _check_dtype(dtype)
    if norm_method not in ("grads", "vmap"):
        raise EngineInputError(f"norm_method must be 'grads' or 'vmap', got {norm_method!r}")
    regs = _validate_regularizers(regularizers)
    base, base_requires = _resolve_base(loss, loss_fn_config)
    packed = pack_batch(inputs, shapes, dtype=dt, bucketing=bucketing)
    present = packed.layout.present
    _check_requires("the base loss", base_requires, present)
    for reg in regs:
        _check_requires(f"regularizer {reg.name!r}", reg.requires, present)

    base_plan: TermPlan | DatumPlan | None = None
    base_params: dict[str, npt.NDArray[Any]] = {}
    if isinstance(base, PackedLoss):
        base_plan = TermPlan(base.fn, base.static_key, base.param_names, label="base loss")
        base_params = {k: np.asarray(v, dt) for k, v in base.params.items()}
    elif isinstance(base, DatumLoss):
        base_plan = DatumPlan(base.fn, packed.layout)

    prepared_arrays = {
        reg.name: _pack_prepared(reg, prepared[reg.name], packed, dt)
        for reg in regs
        if reg.prepare is not None
    }
    members: dict[Any, list[int]] = {}
    for i, reg in enumerate(regs):
        # Grouping only pays off for the norms (one scan branch per kind). Without norms a
        # vmapped group's gradient was measured 200x slower than per-regularizer terms on
        # XLA:CPU (16 regularizers, 1M tokens: 5-7 s against 25 ms), so plain steps never group.
        if norm_method == "vmap" and track_grad_norms and reg.prepare is None:
            shapes_key = tuple(np.shape(reg.params[k]) for k in reg.param_names)
            key: Any = (reg.fn, reg.static_key, reg.param_names, shapes_key)
        else:
            key = ("single", i)
        members.setdefault(key, []).append(i)
    groups, weights, params, prep = [], [], [], []
    slots: list[tuple[int, int]] = [(0, 0)] * len(regs)
    for g, idx in enumerate(members.values()):
        first = regs[idx[0]]
        pre = prepared_arrays.get(first.name, {})
        groups.append(
            TermPlan(
                first.fn,
                first.static_key,
                first.param_names,
                prepared_names=tuple(sorted(pre)),
                size=len(idx),
                label=f"regularizer {first.name!r}",
            )
        )
        weights.append(np.asarray([regs[i].weight for i in idx], dt))
        params.append(
            {
                k: np.stack([np.asarray(regs[i].params[k], dt) for i in idx])
                for k in first.param_names
            }
        )
        prep.append(pre)
        for j, i in enumerate(idx):
            slots[i] = (g, j)
    plan = Plan(base=base_plan, groups=tuple(groups), track_grad_norms=track_grad_norms)
    # Host arrays go straight to the jitted program: its C++ dispatch transfers them faster
    # than a Python-level jax.device_put of the pytree (even ahead of time, off the critical
    # path, that measured 3x the time the dispatch saved).
    args = (packed.batch, base_params, tuple(weights), tuple(params), tuple(prep))
    return _Template(plan, packed, args, regs, tuple(slots), dt)


def _pack_prepared(
    reg: Regularizer,
    result: Mapping[str, Sequence[npt.ArrayLike]],
    packed: PackedBatch,
    dtype: np.dtype[Any],
) -> dict[str, npt.NDArray[Any]]:
    if not isinstance(result, Mapping):
        raise RegularizerError(
            f"regularizer {reg.name!r}: prepare must return a mapping of arrays, "
            f"got {type(result).__name__}",
            name=reg.name,
        )
    taken = set(reg.param_names) | {k for k, _ in reg.static_key}
    out = {}
    for key, values in result.items():
        if key in taken or not isinstance(key, str) or not key.isidentifier():
            raise RegularizerError(
                f"regularizer {reg.name!r}: prepare returned key {key!r}, which is not an "
                "identifier or clashes with a parameter or static option",
                name=reg.name,
            )
        try:
            out[key] = pack_per_datum(
                values, packed, dtype=dtype, what=f"regularizer {reg.name!r} prepare[{key!r}]"
            )
        except EngineInputError as exc:
            raise RegularizerError(str(exc), name=reg.name) from exc
    return out


def _term_label(step: _Step, group: int, index: int) -> tuple[str, str]:
    for reg, slot in zip(step.regularizers, step.slots, strict=True):
        if slot == (group, index):
            return reg.name, f"regularizer {reg.name!r}"
    raise AssertionError("every group slot belongs to a regularizer")


def _raise_non_finite(step: _Step, out: dict[str, Any]) -> None:
    """Re-run with per-term gradients to name the first non-finite term and datum."""
    diag = step.run(dataclasses.replace(step.plan, track_grad_norms=True, diagnose=True))
    trailing = math.prod(step.packed.logprobs.shape[1:])
    layout = step.packed.layout

    def where(flag: Any, flat: Any) -> int | None:
        return layout.datum_at(int(flat) // trailing) if bool(flag) else None

    terms: list[tuple[str, str, float, Any, Any]] = [
        ("base", "the base loss", float(diag["base"]), *diag["base_bad"])
    ]
    for g, (values, (flags, flats)) in enumerate(zip(diag["values"], diag["bad"], strict=True)):
        for j in range(len(values)):
            name, label = _term_label(step, g, j)
            terms.append((name, label, float(values[j]), flags[j], flats[j]))
    for name, label, value, flag, flat in terms:
        if bool(flag):
            datum = where(flag, flat)
            raise NonFiniteError(
                f"{label} has a non-finite gradient at datum {datum} (value {value}); "
                "nothing was sent",
                term=name,
                datum=datum,
            )
        if not math.isfinite(value):
            raise NonFiniteError(
                f"{label} has a non-finite value ({value}); nothing was sent", term=name, datum=None
            )
    raise NonFiniteError(
        f"loss_total is not finite ({float(out['total'])}) although every term is: the "
        "weighted sum overflows; nothing was sent",
        term="loss_total",
        datum=None,
    )


def _finish(step: _Step) -> CustomLossResult:
    out = step.run()
    scalars = [out["total"], out["base"], *out["values"]]
    if not all(np.isfinite(s).all() for s in scalars) or not np.isfinite(out["grad"]).all():
        _raise_non_finite(step, out)
    tracked = step.plan.track_grad_norms
    metrics = as_floats(out["base_metrics"])
    regs: dict[str, RegularizerOutput] = {}
    for reg, (g, j) in zip(step.regularizers, step.slots, strict=True):
        value = float(out["values"][g][j])
        reg_metrics = {k: float(v[j]) for k, v in out["metrics"][g].items()}
        metrics.update({f"{reg.name}/{k}": v for k, v in reg_metrics.items()})
        regs[reg.name] = RegularizerOutput(
            name=reg.name,
            value=value,
            weight=reg.weight,
            contribution=reg.weight * value,
            grad_norm=float(out["norms"][g][j]) if tracked else None,
            metrics=reg_metrics,
        )
    base = float(out["base"])
    reg_total = math.fsum(r.contribution for r in regs.values())
    return CustomLossResult(
        loss_total=float(out["total"]),
        base_loss=base,
        base_grad_norm=float(out["base_norm"]) if tracked else None,
        regularizer_total=reg_total,
        regularizers=regs,
        total_grad_norm=float(out["total_norm"]),
        metrics=metrics,
        gradients=step.packed.layout.split(np.asarray(out["grad"])),
    )


def _emit_start(emit: EmitFn | None, regularizers: Sequence[Any], track: bool) -> None:
    _emit(
        emit,
        "custom_loss.start",
        {"system_time": time.time()},
        {"regularizer_count": len(regularizers), "track_grad_norms": track},
    )


def _report(emit: EmitFn | None, result: CustomLossResult, duration: float) -> None:
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


def _exception(emit: EmitFn | None, exc: BaseException, duration: float) -> None:
    metadata: dict[str, Any] = {"reason": type(exc).__name__, "message": str(exc)}
    for attr in ("term", "datum", "name"):
        if hasattr(exc, attr):
            metadata[attr] = getattr(exc, attr)
    _emit(emit, "custom_loss.exception", {"duration": duration}, metadata)


async def _run_prepares(regs: Sequence[Regularizer], data: Sequence[Any]) -> Prepared:
    async def one(reg: Regularizer) -> Mapping[str, Sequence[npt.ArrayLike]]:
        assert reg.prepare is not None
        try:
            return await asyncio.wait_for(reg.prepare(data), timeout=reg.prepare_timeout)
        except TimeoutError as exc:
            raise RegularizerError(
                f"regularizer {reg.name!r}: prepare timed out after {reg.prepare_timeout} s",
                name=reg.name,
            ) from exc
        except Exception as exc:
            raise RegularizerError(
                f"regularizer {reg.name!r}: prepare failed: {type(exc).__name__}: {exc}",
                name=reg.name,
            ) from exc

    waiting = [reg for reg in regs if reg.prepare is not None]
    results = await asyncio.gather(*(one(reg) for reg in waiting), return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return {reg.name: result for reg, result in zip(waiting, results, strict=True)}  # type: ignore[misc]
