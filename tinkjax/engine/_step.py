"""A custom-loss step on the host: plan it, pack it, run the program, check and read it.

:func:`plan_step` turns a :class:`~tinkjax.engine.CustomLossSpec`, the loss inputs and the
logprobs' shapes into a :class:`StepTemplate`: the static :class:`~tinkjax.engine._program.Plan`
(the regularizers grouped into the program's terms) and every argument but the logprobs.
:meth:`StepTemplate.step` adds the logprobs (a :class:`Step`); :func:`finish_step` runs the
program, checks every value and gradient is finite (naming the first bad term and datum
otherwise) and reads the outputs back as a :class:`CustomLossResult`. No I/O here; the entry
points (:mod:`tinkjax.engine._compute`, :mod:`tinkjax.engine._pending`) await ``prepare`` steps
and emit events around these.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
import numpy.typing as npt

from tinkjax.engine._errors import EngineInputError, NonFiniteError
from tinkjax.engine._loss_spec import CustomLossSpec
from tinkjax.engine._pack import PackedBatch, PackedInputs, checked_logprobs, pack_batch
from tinkjax.engine._prepare import Prepared, pack_prepared
from tinkjax.engine._program import Plan, fetch, program
from tinkjax.engine._result import CustomLossResult, RegularizerOutput, as_floats
from tinkjax.engine._term_specs import DatumLoss, PackedLoss, Regularizer
from tinkjax.engine._terms import DatumPlan, TermPlan

__all__ = ["Step", "StepTemplate", "build_step", "finish_step", "plan_step"]


@dataclasses.dataclass(frozen=True)
class Step:
    """A step ready to run: the static plan, the arguments, and how to read the outputs."""

    plan: Plan
    args: tuple[Any, ...]
    packed: PackedInputs
    regularizers: tuple[Regularizer, ...]
    slots: tuple[tuple[int, int], ...]  # regularizer i -> (group, index in group)
    dtype: np.dtype[Any]

    def run(self, plan: Plan | None = None) -> dict[str, Any]:
        """The program's outputs on the host (under another ``plan`` if given)."""
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


@dataclasses.dataclass(frozen=True)
class StepTemplate:
    """A step without its logprobs: the plan and every other argument, ready for them."""

    plan: Plan
    packed: PackedBatch
    args: tuple[Any, ...]  # the program's arguments after the logprobs
    regularizers: tuple[Regularizer, ...]
    slots: tuple[tuple[int, int], ...]
    dtype: np.dtype[Any]

    def step(self, logprobs: Sequence[npt.ArrayLike]) -> Step:
        """The step with these per-datum logprobs (checked against the layout)."""
        return self.step_for(self.packed.with_logprobs(logprobs))

    def step_for(self, packed: PackedInputs) -> Step:
        """The step with logprobs already packed (:meth:`PackedBatch.with_logprobs`)."""
        return Step(
            self.plan,
            (packed.logprobs, *self.args),
            packed,
            self.regularizers,
            self.slots,
            self.dtype,
        )


def build_step(
    spec: CustomLossSpec,
    inputs: Sequence[Mapping[str, npt.ArrayLike]],
    logprobs: Sequence[npt.ArrayLike],
    prepared: Prepared,
) -> Step:
    """Check the logprobs, then pack and plan the step (:func:`plan_step`)."""
    _check_x64(spec.dtype)
    lps = checked_logprobs(inputs, logprobs)
    template = plan_step(spec, inputs, [lp.shape for lp in lps], prepared)
    return template.step_for(template.packed.with_checked_logprobs(lps))


def plan_step(
    spec: CustomLossSpec,
    inputs: Sequence[Mapping[str, npt.ArrayLike]],
    shapes: Sequence[tuple[int, ...]],
    prepared: Prepared,
) -> StepTemplate:
    """Pack the loss inputs for logprobs of per-datum ``shapes`` and plan the program.

    ``prepared`` holds, per regularizer with a ``prepare`` step, what it returned.

    Raises:
        EngineInputError: float64 outside ``jax.enable_x64``, bad data, or an input the base
            loss or a regularizer requires that the data lacks.
        RegularizerError: a ``prepare`` result that does not fit the batch.
    """
    dt = spec.dtype
    _check_x64(dt)
    regs = spec.regularizers
    base = spec.base
    packed = pack_batch(inputs, shapes, dtype=dt, bucketing=spec.bucketing)
    present = packed.layout.present
    _check_requires("the base loss", base.requires if isinstance(base, PackedLoss) else (), present)
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
        reg.name: pack_prepared(reg, prepared[reg.name], packed, dt)
        for reg in regs
        if reg.prepare is not None
    }
    members: dict[Any, list[int]] = {}
    for i, reg in enumerate(regs):
        # Grouping only pays off for the norms (one scan branch per kind). Without norms a
        # vmapped group's gradient was measured 200x slower than per-regularizer terms on
        # XLA:CPU (16 regularizers, 1M tokens: 5-7 s against 25 ms), so plain steps never group.
        if spec.norm_method == "vmap" and spec.track_grad_norms and reg.prepare is None:
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
    plan = Plan(base=base_plan, groups=tuple(groups), track_grad_norms=spec.track_grad_norms)
    # Host arrays go straight to the jitted program: its C++ dispatch transfers them faster
    # than a Python-level jax.device_put of the pytree (even ahead of time, off the critical
    # path, that measured 3x the time the dispatch saved).
    args = (packed.batch, base_params, tuple(weights), tuple(params), tuple(prep))
    return StepTemplate(plan, packed, args, regs, tuple(slots), dt)


def _check_x64(dtype: np.dtype[Any]) -> None:
    # the one check that depends on where the step runs, not on the spec
    if jax.dtypes.canonicalize_dtype(dtype) != dtype:
        raise EngineInputError(
            "dtype float64 needs 64-bit JAX: run under `with jax.enable_x64(True):`"
        )


def _check_requires(label: str, requires: Sequence[str], present: Sequence[str]) -> None:
    missing = [key for key in requires if key not in present]
    if missing:
        raise EngineInputError(
            f"{label} requires loss inputs {missing}, which the data does not carry "
            f"(it has {list(present)})"
        )


def _term_label(step: Step, group: int, index: int) -> tuple[str, str]:
    for reg, slot in zip(step.regularizers, step.slots, strict=True):
        if slot == (group, index):
            return reg.name, f"regularizer {reg.name!r}"
    raise AssertionError("every group slot belongs to a regularizer")


def _raise_non_finite(step: Step, out: dict[str, Any]) -> None:
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


def finish_step(step: Step, out: dict[str, Any] | None = None) -> CustomLossResult:
    """Run the step (unless its outputs ``out`` are given: a dispatch of several runs' steps
    computed them) and read its outputs.

    Raises:
        NonFiniteError: a value or gradient is NaN/Inf (names the first such term and datum).
    """
    if out is None:
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
