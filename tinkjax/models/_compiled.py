"""The runtime's module-level jitted programs, and how often each has been traced.

Programs live at module level so that every ``ModelRuntime`` of the same model shares their
compiled executables; each is wrapped by :func:`_counted`, which feeds :func:`trace_counts`
(the no-retrace tests) and flags that a compile may have left freed heap memory to hand back
(:func:`release_compile_memory`).
"""

from __future__ import annotations

import ctypes
import functools
import sys
from collections import Counter
from collections.abc import Callable
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import optax

from tinkjax.models._adapters import init_lora_weights
from tinkjax.models._programs import (
    LoraStack,
    commit_core,
    finite_rows_core,
    forward_backward_core,
    forward_core,
    logprobs_vjp_core,
    optim_core,
    sample_core,
    vjp_backward_core,
    zero_slot_core,
)
from tinkjax.models._transformer import init_base_params

__all__ = ["trace_counts"]

_TRACES: Counter[str] = Counter()
_F = TypeVar("_F", bound=Callable[..., Any])


def _counted(name: str, fn: _F) -> _F:
    """``fn`` that bumps ``trace_counts()[name]`` each time JAX traces it.

    ``functools.wraps`` keeps ``fn``'s signature visible to ``jax.jit``, which needs it to map
    ``donate_argnames`` and ``static_argnames`` onto positional arguments (without it, an
    argument passed by position is silently not donated and XLA copies it).
    """

    @functools.wraps(fn)
    def traced(*args: Any, **kwargs: Any) -> Any:
        global _TRIM_PENDING
        _TRACES[name] += 1
        _TRIM_PENDING = True
        return fn(*args, **kwargs)

    return traced  # type: ignore[return-value]


_TRIM_PENDING = False
_MALLOC_TRIM: Callable[[int], int] | None = None
if sys.platform.startswith("linux"):
    try:
        _MALLOC_TRIM = ctypes.CDLL(None).malloc_trim  # glibc only
    except (OSError, AttributeError):
        _MALLOC_TRIM = None


def release_compile_memory() -> None:
    """Hands the heap memory freed after a trace and compile back to the OS.

    Compiling a program allocates a few hundred MB that glibc keeps for reuse after it is
    freed; the resident size of a process that compiled its handful of programs would stay
    that much larger for good. ``malloc_trim`` releases the free pages (it does not move live
    memory). Only called after a call that traced something, so steady-state steps never pay
    for it.
    """
    global _TRIM_PENDING
    if _TRIM_PENDING:
        _TRIM_PENDING = False
        if _MALLOC_TRIM is not None:
            _MALLOC_TRIM(0)


def trace_counts() -> dict[str, int]:
    """How many times each jitted program of the runtime has been traced in this process."""
    return dict(_TRACES)


forward_jit = jax.jit(_counted("forward", forward_core), static_argnames=("config", "loss_name"))
forward_backward_jit = jax.jit(
    _counted("forward_backward", forward_backward_core),
    static_argnames=("config", "loss_name"),
    donate_argnames=("acc",),
)
logprobs_vjp_jit = jax.jit(_counted("logprobs_vjp", logprobs_vjp_core), static_argnames=("config",))
vjp_backward_jit = jax.jit(_counted("vjp_backward", vjp_backward_core), donate_argnames=("acc",))
optim_jit = jax.jit(_counted("optim_step", optim_core), donate_argnames=("stack", "opt_state"))
finite_rows_jit = jax.jit(_counted("finite_rows", finite_rows_core))
commit_jit = jax.jit(_counted("commit", commit_core), donate_argnames=("acc",))
zero_slot_jit = jax.jit(_counted("zero_slot", zero_slot_core), donate_argnames=("acc",))
sample_jit = jax.jit(
    _counted("sample", sample_core), static_argnames=("config", "n_rows", "gen_len")
)
init_base_jit = jax.jit(_counted("init_base", init_base_params), static_argnums=(0, 1))
#: LoRA initialisation; the seed is traced (``key_data``), so creating a run with a new seed
#: compiles nothing: call it with ``dataclasses.replace(info, seed=0)`` as the static structure.
init_lora_jit = jax.jit(_counted("init_lora", init_lora_weights), static_argnums=(0, 1, 2))


def pad_rank(tree: LoraStack, rank: int) -> LoraStack:
    """Zero-pads ``a [..., d_in, r]`` / ``b [..., r, d_out]`` to rank ``rank``."""

    def pad(x: jax.Array, axis: int) -> jax.Array:
        widths = [(0, 0)] * x.ndim
        widths[axis] = (0, rank - x.shape[axis])
        return jnp.pad(x, widths)

    return {t: (pad(a, a.ndim - 1), pad(b, b.ndim - 2)) for t, (a, b) in tree.items()}


def _install_core(
    stack: LoraStack, acc: LoraStack, slot: jax.Array, weights: LoraStack
) -> tuple[LoraStack, LoraStack, optax.OptState]:
    """Writes one adapter's weights (rank ``r``, trained targets only) into ``slot`` of the
    stack (padded to rank ``R``; other targets zero), zeroes its gradient, and returns a
    fresh AdamW state of the slot's shape. ``stack`` and ``acc`` are donated."""
    rank = next(iter(stack.values()))[0].shape[-1]
    padded = pad_rank(weights, rank)
    put = jax.lax.dynamic_update_index_in_dim
    new_stack, new_acc, params = {}, {}, {}
    for t, (a, b) in stack.items():
        pa, pb = padded.get(t, (jnp.zeros_like(a[0]), jnp.zeros_like(b[0])))
        new_stack[t] = (put(a, pa.astype(a.dtype), slot, 0), put(b, pb.astype(b.dtype), slot, 0))
        new_acc[t] = (put(acc[t][0], jnp.zeros_like(a[0]), slot, 0),
                      put(acc[t][1], jnp.zeros_like(b[0]), slot, 0))  # fmt: skip
        params[t] = (pa, pb)
    return new_stack, new_acc, optax.adamw(1e-4).init(params)


install_jit = jax.jit(_counted("install", _install_core), donate_argnames=("stack", "acc"))
