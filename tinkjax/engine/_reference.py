"""Reference per-term gradient norms through ``jacrev`` (tests and benchmarks only).

``jacrev`` over the vector ``[base, reg_1, ..., reg_K]`` pulls every one-hot cotangent back
through every term: O(K²·T) work and a ``[K+1, T]`` Jacobian (engine study §2.4: up to 34×
the plain gradient and 1.2 GB at 1M tokens, K=16). It is an independent route to the same
numbers, which is what a test reference needs; the engine never uses it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, Unpack

import jax
import jax.numpy as jnp
import numpy as np
import numpy.typing as npt

from tinkjax.engine._loss_spec import CustomLossSpec, LossSpec, SpecOptions, as_spec
from tinkjax.engine._program import Plan, base_value
from tinkjax.engine._step import build_step
from tinkjax.engine._terms import group_values

__all__ = ["jacobian_norms", "reference_grad_norms"]

Array = jax.Array


def _term_vector(
    lp: Array, batch: Any, base_params: Any, params: Any, prepared: Any, plan: Plan
) -> Array:
    base, _ = base_value(plan, lp, batch, base_params)
    parts = [base[None]]
    for term, p, pre in zip(plan.groups, params, prepared, strict=True):
        parts.append(group_values(term, lp, batch, p, pre)[0])
    return jnp.concatenate(parts)


def _jacobian_norms(
    lp: Array, batch: Any, base_params: Any, params: Any, prepared: Any, plan: Plan
) -> Array:
    jac = jax.jacrev(_term_vector)(lp, batch, base_params, params, prepared, plan)
    jac = jnp.where(batch.mask[None] > 0, jac, 0.0)
    return jnp.sqrt(jnp.sum(jac.reshape(jac.shape[0], -1) ** 2, axis=1))


#: ``jacobian_norms(lp, batch, base_params, params, prepared, plan=plan)``: the norms ``[1 + K]``
#: of a step without gradient norms (its arguments without the weights), jitted.
jacobian_norms = jax.jit(_jacobian_norms, static_argnames=("plan",))


def reference_grad_norms(
    inputs: Sequence[Mapping[str, npt.ArrayLike]],
    logprobs: Sequence[npt.ArrayLike],
    spec: CustomLossSpec | LossSpec = None,
    **options: Unpack[SpecOptions],
) -> npt.NDArray[Any]:
    """Norms ``[1 + K]`` of ∂base/∂lp and each ∂regᵢ/∂lp (unweighted), via ``jacrev``.

    Arguments as for :func:`~tinkjax.engine.compute_custom_loss` (the spec's norm settings are
    ignored). Regularizers with a ``prepare`` step are not supported.
    """
    spec = as_spec(spec, **options)
    if spec.track_grad_norms:  # a plain step: one term per regularizer, in order
        spec = dataclasses.replace(spec, track_grad_norms=False)
    step = build_step(spec, inputs, logprobs, prepared={})
    lp, batch, base_params, _weights, params, prepared = step.args
    norms = jacobian_norms(lp, batch, base_params, params, prepared, plan=step.plan)
    return np.asarray(norms)
