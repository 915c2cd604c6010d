"""The one jitted program of a custom-loss step.

``program(lp, batch, base_params, weights, params, prepared, plan=plan)`` returns, in one
XLA program: the base value, every regularizer's value, the weighted total, ∂total/∂lp, user
metrics, the norm of the total gradient and, with ``plan.track_grad_norms``, the gradient norm
of the base and of every regularizer.

How the norms are computed (engine study §2.4, re-measured in ``bench/engine_bench.py``): each
term's gradient comes from its own ``value_and_grad`` inside the same program (XLA shares the
forward work), and the total gradient is their weighted sum, so no separate pass over the
total is needed. A group of regularizers of one kind is ``vmap``ped over its stacked
parameters. ``jacrev`` over the vector of term values is *not* used: it does O(K²·T) work;
it survives only as the test reference in :mod:`tinkjax.engine._reference`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from tinkjax.engine._batch import LossBatch
from tinkjax.engine._terms import (
    DatumPlan,
    Metrics,
    TermPlan,
    eval_datum_loss,
    eval_term,
    group_values,
    group_values_and_grads,
)

Array = jax.Array

_traces = 0


def trace_count() -> int:
    """How many times the engine program has been traced in this process (a test/debug aid)."""
    return _traces


@dataclasses.dataclass(frozen=True)
class Plan:
    """Everything static about a step: the compiled program is cached on it (and on shapes).

    Attributes:
        base: the base loss, or ``None`` for a zero base.
        groups: regularizer groups in output order.
        track_grad_norms: also return per-term gradient norms.
        diagnose: also return, per term, where its gradient is first non-finite (the slow
            path taken only after a non-finite result, to name the term and datum).
    """

    base: TermPlan | DatumPlan | None
    groups: tuple[TermPlan, ...]
    track_grad_norms: bool
    diagnose: bool = False


def _base_eval(
    plan: Plan, lp: Array, batch: LossBatch, base_params: dict[str, Array]
) -> tuple[Array, Metrics]:
    if plan.base is None:
        return jnp.zeros((), lp.dtype), {}
    if isinstance(plan.base, DatumPlan):
        return eval_datum_loss(plan.base, lp, batch)
    return eval_term(plan.base, lp, batch, base_params, {})


def _masked(g: Array, mask: Array) -> Array:
    # where, not multiply: a NaN gradient on a padded position must not poison the norm
    return jnp.where(mask > 0, g, jnp.zeros((), g.dtype))


def _norm(g: Array) -> Array:
    return jnp.sqrt(jnp.sum(g * g))


def _first_bad(g: Array) -> tuple[Array, Array]:
    bad = ~jnp.isfinite(g.reshape(-1))
    return jnp.any(bad), jnp.argmax(bad)


def _run(
    lp: Array,
    batch: LossBatch,
    base_params: dict[str, Array],
    weights: tuple[Array, ...],
    params: tuple[dict[str, Array], ...],
    prepared: tuple[dict[str, Array], ...],
    *,
    plan: Plan,
) -> dict[str, Any]:
    global _traces
    _traces += 1
    mask = batch.mask
    if plan.track_grad_norms:
        return _run_tracked(lp, batch, base_params, weights, params, prepared, plan=plan)

    def total_fn(x: Array) -> tuple[Array, Any]:
        base, base_metrics = _base_eval(plan, x, batch, base_params)
        values, metrics = [], []
        total = base
        for term, w, p, pre in zip(plan.groups, weights, params, prepared, strict=True):
            v, m = group_values(term, x, batch, p, pre)
            total = total + jnp.dot(w, v)
            values.append(v)
            metrics.append(m)
        return total, (base, base_metrics, tuple(values), tuple(metrics))

    (total, (base, base_metrics, values, metrics)), grad = jax.value_and_grad(
        total_fn, has_aux=True
    )(lp)
    grad = _masked(grad, mask)
    out: dict[str, Any] = {
        "total": total,
        "base": base,
        "base_metrics": base_metrics,
        "values": values,
        "metrics": metrics,
        "grad": grad,
        "total_norm": _norm(grad),
    }
    return out


def _run_tracked(
    lp: Array,
    batch: LossBatch,
    base_params: dict[str, Array],
    weights: tuple[Array, ...],
    params: tuple[dict[str, Array], ...],
    prepared: tuple[dict[str, Array], ...],
    *,
    plan: Plan,
) -> dict[str, Any]:
    mask = batch.mask
    # Tracked: every term's value and gradient from its own value_and_grad (XLA shares the
    # forward work), the total gradient as Σ wᵢ·gᵢ. Measured against a separate backward pass
    # per term for the norms alone, which cost more time and memory on XLA:CPU.
    (base, base_metrics), base_grad = jax.value_and_grad(
        lambda x: _base_eval(plan, x, batch, base_params), has_aux=True
    )(lp)
    base_grad = _masked(base_grad, mask)
    total, grad = base, base_grad
    values_l, metrics_l, norms_l, bad_l = [], [], [], []
    for term, w, p, pre in zip(plan.groups, weights, params, prepared, strict=True):
        v, m, g = group_values_and_grads(term, lp, batch, p, pre)
        g = jax.vmap(_masked, in_axes=(0, None))(g, mask)
        total = total + jnp.dot(w, v)
        grad = grad + jnp.tensordot(w, g, axes=1)
        values_l.append(v)
        metrics_l.append(m)
        norms_l.append(jax.vmap(_norm)(g))
        if plan.diagnose:
            bad_l.append(jax.vmap(_first_bad)(g))
    out = {
        "total": total,
        "base": base,
        "base_metrics": base_metrics,
        "values": tuple(values_l),
        "metrics": tuple(metrics_l),
        "grad": grad,
        "total_norm": _norm(grad),
        "base_norm": _norm(base_grad),
        "norms": tuple(norms_l),
    }
    if plan.diagnose:
        out["base_bad"] = _first_bad(base_grad)
        out["bad"] = tuple(bad_l)
    return out


#: The engine program; ``jax.jit`` caches one executable per (plan, shapes, dtypes).
program = jax.jit(_run, static_argnames=("plan",))
