"""The warm-up's compile of one training program of a ``ModelRuntime`` (``self``; run on the
warm-up thread by :class:`tinkjax.models._warmup.Warmup`)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from tinkjax.losses import get_loss_definition
from tinkjax.models._adapters import TARGETS, target_shape
from tinkjax.models._batching import empty_batch
from tinkjax.models._compiled import (
    commit_jit,
    finite_rows_jit,
    forward_backward_jit,
    forward_jit,
    optim_jit,
    zero_slot_jit,
)
from tinkjax.models._programs import LoraStack
from tinkjax.models._types import ADAM_KEYS

__all__ = ["ShapeKey", "warm_program"]

#: A training program's shapes: ``(kind, loss_fn, slots S, rank R, length, width K, adapters)``.
ShapeKey = tuple[str, str, int, int, int, int, int]


def warm_program(self: Any, key: ShapeKey) -> None:
    """Compiles the program of ``key`` by running it once on zero arrays of its shapes
    (on the warm-up thread: nothing of the runtime's state is read but the base weights,
    nothing written)."""
    kind, loss_fn, n_slots, rank, length, width, adapters = key
    with jax.enable_x64(self._x64):
        stack: LoraStack = {}
        for t in TARGETS:
            n_l, d_in, d_out = target_shape(self.config, t)
            stack[t] = (
                jnp.zeros((n_slots, n_l, d_in, rank), self.dtype),
                jnp.zeros((n_slots, n_l, rank, d_out), self.dtype),
            )
        if kind == "optim_step":
            params = {t: (a[0], b[0]) for t, (a, b) in stack.items()}
            hyper = {k: np.asarray(0.0, self._np_dtype) for k in ADAM_KEYS}
            acc = jax.tree.map(jnp.zeros_like, stack)
            state = optax.adamw(1e-4).init(params)
            optim_jit(stack, acc, state, np.int32(0), hyper)  # compiles before it returns
            zero_slot_jit(acc, np.int32(0))
            return
        definition = get_loss_definition(loss_fn)
        config = self._resolve_config(loss_fn, None, "warmup")
        packed = empty_batch(
            length=length, width=width, adapters=max(adapters, 1),
            input_keys=tuple(definition.input_arguments), config=config,
            config_keys=tuple(sorted(config)), dtype=self._np_dtype,
        )  # fmt: skip
        args = dict(
            base=self._base, stack=stack, chunk_slot=packed.chunk_slot,
            n_live=packed.n_live, chunk_scale=packed.chunk_scale,
            tokens=packed.tokens, targets=packed.targets, valid=packed.valid,
            inputs=packed.inputs, loss_config=packed.loss_config,
        )  # fmt: skip
        if kind == "forward":
            forward_jit(config=self.config, loss_name=loss_fn, **args)
            return
        delta = {
            t: (jnp.zeros((adapters, *a.shape[1:]), a.dtype),
                jnp.zeros((adapters, *b.shape[1:]), b.dtype))
            for t, (a, b) in stack.items()
        }  # fmt: skip
        delta, _, _ = forward_backward_jit(
            config=self.config, loss_name=loss_fn, acc=delta, chunk_acc=packed.chunk_acc,
            **args,
        )  # fmt: skip
        finite_rows_jit(delta)
        commit_jit(stack, delta, np.zeros((adapters,), np.int32), np.zeros(adapters, np.bool_))
