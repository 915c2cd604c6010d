"""Custom losses in the official SDK's signature: which framework a loss is written in, and
running a torch loss the way the official SDK does.

``forward_backward_custom(data, loss_fn)`` with a bare callable ``loss_fn(data, logprobs_list)
-> (loss, metrics)`` accepts a loss written in JAX (run by the engine, compiled) or in torch
(the official SDK's style, e.g. tinker-cookbook's DPO loss). :func:`loss_style` tells which,
by this rule (``docs/compat.md``):

1. A ``__tinkjax_loss_style__`` attribute of ``"jax"`` or ``"torch"`` on the function decides.
2. Otherwise the objects the function's code refers to (global names, closure cells, also in
   nested functions, lambdas and comprehensions) are resolved: one that comes from the ``torch``
   package (the module itself, ``torch.nn.functional as F``, ``torch.stack``, a tensor) makes it a
   torch loss, one from ``jax`` (``jnp``, ``jax.nn``, ``optax``) a JAX loss. Both at once is an
   error that asks for the attribute.
3. Neither: a loss that calls ``.to_torch()`` is a torch loss; anything else is a JAX loss.

A torch loss runs as in the official SDK: the forward pass's logprobs become leaf tensors that
require grad, the loss gets the original ``Datum`` objects (``TensorData.to_torch()`` works),
``loss.backward()`` gives ``∂loss/∂logprobs``, and those gradients drive the linearised backward
pass (:mod:`._custom`). It runs on a worker thread, so the client loop stays free.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import math
import types
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from tinkjax.errors import EngineInputError, NonFiniteError
from tinkjax.types import Datum

__all__ = ["LossStyle", "TorchLossResult", "loss_style", "run_torch_loss"]

LossStyle = Literal["jax", "torch"]

_JAX_ROOTS = frozenset({"jax", "jaxlib", "optax", "chex", "flax", "equinox"})


def _unwrap(fn: Any) -> Any:
    """The plain function behind a partial, a bound method or a callable object."""
    for _ in range(8):
        if isinstance(fn, functools.partial):
            fn = fn.func
        elif inspect.ismethod(fn):
            fn = fn.__func__
        elif not inspect.isfunction(fn) and inspect.isfunction(vars(type(fn)).get("__call__")):
            fn = type(fn).__call__  # a callable object: its class's __call__
        else:
            break
    return inspect.unwrap(fn) if inspect.isfunction(fn) else fn


def _codes(code: types.CodeType) -> Iterator[types.CodeType]:
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _codes(const)


def _root(obj: Any) -> str:
    """The top-level package an object comes from (``""`` when unknown)."""
    if isinstance(obj, types.ModuleType):
        name = obj.__name__
    else:
        name = getattr(obj, "__module__", None) or type(obj).__module__ or ""
    return str(name).split(".", 1)[0]


def loss_style(fn: Callable[..., Any]) -> LossStyle:
    """Whether ``fn`` is a JAX or a torch loss, by the rule in the module docstring.

    Raises:
        EngineInputError: the function refers to both torch and JAX, or its
            ``__tinkjax_loss_style__`` is not ``"jax"`` or ``"torch"``.
    """
    declared = getattr(fn, "__tinkjax_loss_style__", None)
    if declared is not None:
        if declared not in ("jax", "torch"):
            raise EngineInputError(
                f"loss_fn.__tinkjax_loss_style__ must be 'jax' or 'torch', got {declared!r}"
            )
        return declared  # type: ignore[no-any-return]
    target = _unwrap(fn)
    code = getattr(target, "__code__", None)
    if code is None:
        return "jax"
    namespace = getattr(target, "__globals__", {})
    referenced: list[Any] = [
        namespace[name] for c in _codes(code) for name in c.co_names if name in namespace
    ]
    referenced += [cell.cell_contents for cell in target.__closure__ or () if _filled(cell)]
    if isinstance(fn, functools.partial):
        referenced += [*fn.args, *fn.keywords.values()]
    roots = {_root(obj) for obj in referenced}
    torch_side = "torch" in roots
    jax_side = bool(roots & _JAX_ROOTS)
    if torch_side and jax_side:
        raise EngineInputError(
            f"loss_fn {getattr(fn, '__name__', fn)!r} refers to both torch and JAX; set "
            "loss_fn.__tinkjax_loss_style__ = 'torch' or 'jax' to say which it is written in"
        )
    if torch_side:
        return "torch"
    if jax_side:
        return "jax"
    attrs = {name for c in _codes(code) for name in c.co_names}
    return "torch" if "to_torch" in attrs else "jax"


def _filled(cell: types.CellType) -> bool:
    try:
        cell.cell_contents  # noqa: B018 - an empty cell raises ValueError
    except ValueError:
        return False
    return True


@dataclasses.dataclass(frozen=True)
class TorchLossResult:
    """What a torch loss computed, as host values.

    Attributes:
        loss_total: the loss (summed, as the official SDK reports ``loss:sum``).
        metrics: the loss's metrics as floats.
        gradients: per datum, ``∂loss/∂logprobs`` shaped like its logprobs (float32).
    """

    loss_total: float
    metrics: dict[str, float]
    gradients: list[npt.NDArray[np.float32]]


def run_torch_loss(
    fn: Callable[[list[Datum], list[Any]], Any],
    data: Sequence[Datum],
    logprobs: Sequence[npt.NDArray[Any]],
) -> TorchLossResult:
    """``fn(data, logprobs_as_tensors)`` and its gradients with respect to the logprobs.

    A datum whose logprobs the loss does not use gets a zero gradient.

    Raises:
        ImportError: torch is not installed.
        EngineInputError: ``fn`` does not return ``(loss tensor, metrics dict)``.
        NonFiniteError: the loss or a gradient is NaN or infinite (nothing is sent).
    """
    try:
        # Typed as Any: torch is optional, and mypy runs where it may be missing.
        torch: Any = importlib.import_module("torch")
    except ImportError as exc:
        raise ImportError(
            "this forward_backward_custom loss is written in torch (it refers to torch or "
            "calls .to_torch()), and torch is not installed: pip install torch"
        ) from exc
    tensors = [
        torch.tensor(np.asarray(lp, dtype=np.float32)).requires_grad_(True) for lp in logprobs
    ]
    out = fn(list(data), tensors)
    if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], dict)):
        raise EngineInputError(
            f"a torch loss must return (loss, metrics), a tensor and a dict; got {type(out)!r}"
        )
    loss, metrics = out
    if not isinstance(loss, torch.Tensor) or not loss.requires_grad:
        raise EngineInputError(
            "the torch loss's value must be a tensor computed from the logprobs "
            f"(requires_grad), got {loss!r:.80}"
        )
    total = float(loss.detach().sum().item())
    if not math.isfinite(total):
        raise NonFiniteError(
            f"the torch loss is not finite ({total}); nothing was sent", term="base", datum=None
        )
    loss.backward()
    gradients = []
    for i, t in enumerate(tensors):
        g = np.zeros(t.shape, np.float32) if t.grad is None else t.grad.numpy().astype(np.float32)
        if not np.isfinite(g).all():
            raise NonFiniteError(
                f"the torch loss has a non-finite gradient at datum {i}; nothing was sent",
                term="base",
                datum=i,
            )
        gradients.append(g)
    floats = {str(k): float(v) for k, v in metrics.items()}
    return TorchLossResult(loss_total=total, metrics=floats, gradients=gradients)
