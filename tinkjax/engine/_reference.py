"""Reference per-term gradient norms through ``jacrev`` (tests and benchmarks only).

``jacrev`` over the vector ``[base, reg_1, ..., reg_K]`` pulls every one-hot cotangent back
through every term: O(K²·T) work and a ``[K+1, T]`` Jacobian (engine study §2.4: up to 34×
the plain gradient and 1.2 GB at 1M tokens, K=16). It is an independent route to the same
numbers, which is what a test reference needs; the engine never uses it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpy.typing as npt

from tinkjax.engine._engine import _DEFAULT_BUCKETING, LossSpec, _build_step
from tinkjax.engine._kernel import Plan, _base_eval
from tinkjax.engine._pack import Bucketing
from tinkjax.engine._spec import Regularizer
from tinkjax.engine._terms import group_values

Array = jax.Array


def _term_vector(
    lp: Array, batch: Any, base_params: Any, params: Any, prepared: Any, plan: Plan
) -> Array:
    base, _ = _base_eval(plan, lp, batch, base_params)
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


_jacobian_norms_jit = jax.jit(_jacobian_norms, static_argnames=("plan",))


def reference_grad_norms(
    inputs: Sequence[Mapping[str, npt.ArrayLike]],
    logprobs: Sequence[npt.ArrayLike],
    loss: LossSpec = None,
    *,
    regularizers: Sequence[Regularizer] = (),
    loss_fn_config: Mapping[str, float] | None = None,
    dtype: npt.DTypeLike = np.float32,
    bucketing: Bucketing = _DEFAULT_BUCKETING,
) -> npt.NDArray[Any]:
    """Norms ``[1 + K]`` of ∂base/∂lp and each ∂regᵢ/∂lp (unweighted), via ``jacrev``.

    Regularizers with a ``prepare`` step are not supported.
    """
    step = _build_step(
        inputs,
        logprobs,
        loss,
        regularizers=regularizers,
        loss_fn_config=loss_fn_config,
        track_grad_norms=False,
        norm_method="grads",
        dtype=dtype,
        bucketing=bucketing,
        prepared={},
    )
    lp, batch, base_params, _weights, params, prepared = step.args
    norms = _jacobian_norms_jit(lp, batch, base_params, params, prepared, plan=step.plan)
    return np.asarray(norms)
