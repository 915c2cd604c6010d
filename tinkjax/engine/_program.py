"""The one jitted program of a custom-loss step.

``program(lp, batch, base_params, weights, params, prepared, plan=plan)`` computes, in one
XLA program (read its outputs with :func:`fetch`): the base value, every regularizer's value,
the weighted total, ∂total/∂lp, user metrics, the norm of the total gradient and, with
``plan.track_grad_norms``, the gradient norm of the base and of every regularizer.

How the norms are computed (engine study §2.4, re-measured in ``bench/engine_bench.py``): the
base gets its own ``value_and_grad``; then a ``lax.scan`` over the regularizers runs, per step,
one regularizer's ``value_and_grad`` (a ``lax.switch`` branch per group, the member's
parameters indexed from the group's stacked ones), adds ``wᵢ·gᵢ`` to the carried total
gradient and reduces ``‖gᵢ‖²``, so the total gradient needs no separate pass and only one
per-term gradient is alive at a time. Unrolled, XLA:CPU kept all K gradients alive at once
and fused their sum into one K-operand loop (at 1M tokens and K=16: 2× the plain
value-and-grad's time, temporaries 3.2× the input+output bytes; the scan: ≈1×, 0.34×).
``jacrev`` over the vector of term values is *not* used: it does O(K²·T) work; it survives
only as the test reference in :mod:`tinkjax.engine._reference`.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from tinkjax.engine._batch import LossBatch
from tinkjax.engine._terms import (
    DatumPlan,
    Metrics,
    TermPlan,
    eval_datum_loss,
    eval_term,
    group_values,
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


def base_value(
    plan: Plan, lp: Array, batch: LossBatch, base_params: dict[str, Array]
) -> tuple[Array, Metrics]:
    """The base loss's value and metrics under ``plan`` (zero and none without a base)."""
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
    if plan.track_grad_norms:
        return _run_tracked(
            lp, batch, TermArrays(base_params, weights, params, prepared), plan=plan
        )

    def total_fn(x: Array) -> tuple[Array, Any]:
        base, base_metrics = base_value(plan, x, batch, base_params)
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
    grad = _masked(grad, batch.mask)
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


class TermArrays(NamedTuple):
    """The traced arrays of a step's terms, as :func:`_run` receives them."""

    base_params: dict[str, Array]
    weights: tuple[Array, ...]
    params: tuple[dict[str, Array], ...]
    prepared: tuple[dict[str, Array], ...]


def _run_tracked(lp: Array, batch: LossBatch, terms: TermArrays, *, plan: Plan) -> dict[str, Any]:
    base_params = terms.base_params
    (base, base_metrics), base_grad = jax.value_and_grad(
        lambda x: base_value(plan, x, batch, base_params), has_aux=True
    )(lp)
    base_grad = _masked(base_grad, batch.mask)
    out: dict[str, Any] = {
        "total": base,
        "base": base,
        "base_metrics": base_metrics,
        "values": (),
        "metrics": (),
        "grad": base_grad,
        "base_norm": _norm(base_grad),
        "norms": (),
    }
    if plan.diagnose:
        out["base_bad"] = _first_bad(base_grad)
        out["bad"] = ()
    if plan.groups:
        out.update(_scan_terms(lp, batch, base, base_grad, terms, plan=plan))
    out["total_norm"] = _norm(out["grad"])
    return out


def _scan_terms(
    lp: Array, batch: LossBatch, base: Array, base_grad: Array, terms: TermArrays, *, plan: Plan
) -> dict[str, Any]:
    """Every regularizer's value, metrics, gradient norm and weighted gradient, one at a time.

    A ``lax.scan`` over the K regularizers; step ``i`` runs group ``group_of[i]``'s
    ``value_and_grad`` (a ``lax.switch`` branch) with member ``member_of[i]``'s parameters,
    adds ``wᵢ·gᵢ`` to the carried total gradient and reduces ``‖gᵢ‖²``. Only the carry and
    one ``gᵢ`` are ever alive: O(T) temporary memory whatever K is. Materialising the K
    gradients side by side (1M tokens, K=16) cost 3.2× the program's input+output bytes and
    twice the time: the ~120 MB of temporaries were freshly mapped on every call, ~29k minor
    page faults per call against none for the scan.
    """
    weights, params, prepared = terms.weights, terms.params, terms.prepared
    groups = plan.groups
    sizes = [term.size for term in groups]
    starts = np.cumsum([0, *sizes])
    group_of = np.repeat(np.arange(len(groups), dtype=np.int32), sizes)
    member_of = np.concatenate([np.arange(n, dtype=np.int32) for n in sizes])

    def value_and_grad(g: int, j: Array) -> tuple[tuple[Array, Metrics], Array]:
        member = {k: v[j] for k, v in params[g].items()}
        return jax.value_and_grad(
            lambda x: eval_term(groups[g], x, batch, member, prepared[g]), has_aux=True
        )(lp)

    # switch branches must agree on their outputs: each returns every group's metrics,
    # zeros for the other groups'
    metric_shapes = [
        jax.eval_shape(functools.partial(value_and_grad, g), jnp.int32(0))[0][1]
        for g in range(len(groups))
    ]

    def branch(g: int) -> Callable[[Array], tuple[Array, Array, tuple[Metrics, ...]]]:
        def run(j: Array) -> tuple[Array, Array, tuple[Metrics, ...]]:
            (value, metrics), grad = value_and_grad(g, j)
            every = tuple(
                metrics if h == g else {k: jnp.zeros(s.shape, s.dtype) for k, s in shapes.items()}
                for h, shapes in enumerate(metric_shapes)
            )
            return value, _masked(grad, batch.mask), every

        return run

    branches = [branch(g) for g in range(len(groups))]

    def step(grad: Array, xs: tuple[Array, Array, Array]) -> tuple[Array, tuple[Any, ...]]:
        g, j, w = xs
        value, term_grad, metrics = jax.lax.switch(g, branches, j)
        found = (_first_bad(term_grad),) if plan.diagnose else ()
        return grad + w * term_grad, (value, jnp.sum(term_grad * term_grad), metrics, *found)

    w_flat = jnp.concatenate(weights)
    grad, (values, squares, metrics, *found) = jax.lax.scan(
        step, base_grad, (jnp.asarray(group_of), jnp.asarray(member_of), w_flat)
    )
    spans = [slice(int(a), int(b)) for a, b in itertools.pairwise(starts)]
    out = {
        "total": base + jnp.dot(w_flat, values),
        "values": tuple(values[s] for s in spans),
        "metrics": tuple({k: v[s] for k, v in metrics[g].items()} for g, s in enumerate(spans)),
        "grad": grad,
        "norms": tuple(jnp.sqrt(squares[s]) for s in spans),
    }
    if plan.diagnose:
        flags, flats = found[0]
        out["bad"] = tuple((flags[s], flats[s]) for s in spans)
    return out


#: How the small outputs of a traced program lie in its one vector of them, per
#: ``(plan, float dtype)``: the pytree structure and every leaf's shape. Recorded when the
#: program is traced, which always happens before its first run with that plan.
_layouts: dict[tuple[Plan, str], tuple[Any, tuple[tuple[int, ...], ...]]] = {}


def _run_packed(lp: Array, *args: Any, plan: Plan) -> tuple[Array, Any]:
    """:func:`_run` (same arguments) with its outputs as ``(grad, small)``: ``small`` is every
    other output (values, norms, metrics) raveled into one vector of ``lp``'s dtype, so the
    host fetches two arrays instead of a few dozen (each fetch costs ~10 µs of Python in
    ``device_get``). With ``plan.diagnose`` (the error path) ``small`` is the plain dict."""
    out = _run(lp, *args, plan=plan)
    grad = out.pop("grad")
    if plan.diagnose:
        return grad, out
    leaves, treedef = jax.tree.flatten(out)
    _layouts[(plan, jnp.dtype(lp.dtype).name)] = (treedef, tuple(x.shape for x in leaves))
    small = (
        jnp.concatenate([jnp.ravel(x).astype(lp.dtype) for x in leaves])
        if leaves
        else jnp.zeros((0,), lp.dtype)
    )
    return grad, small


#: The engine program; ``jax.jit`` caches one executable per (plan, shapes, dtypes).
program = jax.jit(_run_packed, static_argnames=("plan",))


def _run_stacked(lp: Array, *args: Any, plan: Plan) -> tuple[Array, Any]:
    """:func:`_run_packed` over a leading run axis of every argument (``jax.vmap``): the steps
    of several runs that share a plan and shapes, as one program."""
    return jax.vmap(functools.partial(_run_packed, plan=plan))(lp, *args)


#: The program over stacked runs; one executable per (plan, run count, shapes, dtypes).
program_stacked = jax.jit(_run_stacked, static_argnames=("plan",))


def fetch(outputs: tuple[Any, Any], plan: Plan, dtype: np.dtype[Any]) -> dict[str, Any]:
    """The program's outputs on the host as the dict :func:`_run` builds (NumPy leaves); for
    :data:`program_stacked`, pass one run's slice of them."""
    grad, small = outputs
    if plan.diagnose:
        fetched: dict[str, Any] = jax.device_get(small)
        fetched["grad"] = np.asarray(grad)
        return fetched
    treedef, shapes = _layouts[(plan, dtype.name)]
    flat = np.asarray(small)
    leaves, pos = [], 0
    for shape in shapes:
        size = math.prod(shape)
        leaves.append(flat[pos : pos + size].reshape(shape))
        pos += size
    out: dict[str, Any] = jax.tree.unflatten(treedef, leaves)
    out["grad"] = np.asarray(grad)
    return out
