"""``ServiceClient.create_custom_loss``: trace a per-datum torch loss, upload it, get a handle.

The loss ``fn(logprobs, *inputs) -> (loss, metrics)`` is traced with ``torch.fx`` (torch is
imported here, on the first call, and only here), its graph encoded node for node as plain
data (``CustomLossGraph``), and posted to ``/api/v1/create_custom_loss``; the server rebuilds
it from its allow-list of operations and answers a ``loss_id``. The :class:`LossHandle` then
makes ``TrainingClient.forward_backward_custom(data, handle)`` one ``forward_backward(data,
"custom", {"loss_id": ...})``: the loss runs inside the server's backward pass, with no
client-side forward pass.
"""

from __future__ import annotations

import builtins
import inspect
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tinkjax.types import (
    CreateCustomLossRequest,
    CreateCustomLossResponse,
    CustomLossGraph,
    CustomLossInput,
    CustomLossNode,
    Datum,
    UntypedAPIFuture,
)

from ._session import SessionContext
from ._transport import decode_response

__all__ = ["LossHandle", "check_handle_data", "trace_custom_loss", "upload_custom_loss"]

_PARAM = re.compile(r"[a-z_][a-z0-9_]{0,63}")


@dataclass(frozen=True)
class LossHandle:
    """A custom loss the server stores (from ``ServiceClient.create_custom_loss``); pass it
    to ``TrainingClient.forward_backward_custom`` in place of a loss function.

    Attributes:
        name: the traced function's name.
        inputs: ``logprobs`` then each ``loss_fn_inputs`` key the loss reads, with its rank.
        session_id: the session that created it; only that session's clients may use it.
        loss_id: the server's id for it.
    """

    name: str
    inputs: tuple[CustomLossInput, ...]
    session_id: str
    loss_id: str

    @property
    def input_names(self) -> tuple[str, ...]:
        """The ``loss_fn_inputs`` keys the loss reads, in the order it takes them."""
        return tuple(i.name for i in self.inputs[1:])


def _inputs(fn: Callable[..., Any], input_ranks: Mapping[str, int]) -> list[CustomLossInput]:
    name = getattr(fn, "__name__", type(fn).__name__)
    params = list(inspect.signature(fn).parameters.values())
    if not params or params[0].name != "logprobs":
        raise ValueError(f"create_custom_loss: {name} must take logprobs as its first parameter")
    for p in params:
        if p.kind not in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) or p.default is not p.empty:
            raise ValueError(
                f"create_custom_loss: {name} parameter {p.name!r} must be a plain positional "
                "parameter without a default"
            )
        if not _PARAM.fullmatch(p.name):
            raise ValueError(f"create_custom_loss: parameter {p.name!r} must be a lowercase name")
    names = [p.name for p in params]
    if set(input_ranks) != set(names):
        raise ValueError(
            f"create_custom_loss: input_ranks must give a rank for each of {names}, got "
            f"{sorted(input_ranks)}"
        )
    for key, rank in input_ranks.items():
        if rank not in (0, 1, 2) or (key == "logprobs" and rank == 0):
            raise ValueError(f"create_custom_loss: input_ranks[{key!r}]: bad rank {rank!r}")
    return [CustomLossInput(name=n, rank=input_ranks[n]) for n in names]  # type: ignore[arg-type]


def _encode(arg: Any) -> Any:
    """One fx argument as the wire's plain data."""
    import torch
    import torch.fx

    if isinstance(arg, torch.fx.Node):
        return {"ref": arg.name}
    if isinstance(arg, float) and not math.isfinite(arg):
        return {"float": str(arg)}
    if arg is None or isinstance(arg, bool | int | float | str):
        return arg
    if isinstance(arg, list):
        return [_encode(a) for a in arg]
    if isinstance(arg, tuple):
        return {"tuple": [_encode(a) for a in arg]}
    if isinstance(arg, dict):
        return {"dict": {str(k): _encode(v) for k, v in arg.items()}}
    if isinstance(arg, slice):
        return {"slice": [_encode(arg.start), _encode(arg.stop), _encode(arg.step)]}
    if arg is Ellipsis:
        return {"ellipsis": True}
    if isinstance(arg, torch.dtype):
        return {"dtype": str(arg).removeprefix("torch.")}
    if isinstance(arg, torch.device):
        return {"device": str(arg)}
    raise ValueError(f"create_custom_loss: cannot send a {type(arg).__name__} argument")


def trace_custom_loss(
    fn: Callable[..., Any], input_ranks: Mapping[str, int]
) -> tuple[list[CustomLossInput], CustomLossGraph]:
    """``fn``'s inputs and its ``torch.fx`` graph as wire data (the server decides what it
    allows).

    Raises:
        ImportError: torch is not installed.
        ValueError: a bad signature or ``input_ranks``, or ``fn`` cannot be traced.
    """
    inputs = _inputs(fn, input_ranks)
    try:
        import torch.fx
    except ImportError as exc:
        raise ImportError(
            "create_custom_loss traces the loss with torch.fx: install torch (pip install torch)"
        ) from exc
    try:
        traced = torch.fx.symbolic_trace(fn)
    except Exception as exc:
        raise ValueError(
            f"create_custom_loss: {getattr(fn, '__name__', fn)!r} cannot be traced by torch.fx: "
            f"{exc} (no branching on tensor values, only torch and math calls)"
        ) from exc
    nodes = []
    for node in traced.graph.nodes:
        target = node.target
        if node.op == "call_function":
            # As the official SDK names them: ``torch.exp``, ``operator.mul``, ``getattr``.
            target = (
                "getattr"
                if target is builtins.getattr
                else f"{getattr(target, '__module__', None) or ''}.{target.__name__}"
            )
            if target.startswith("_operator."):
                target = "operator." + target.removeprefix("_operator.")
        nodes.append(
            CustomLossNode(
                op=node.op,
                name=node.name,
                target=str(target),
                args=[_encode(a) for a in node.args],
                kwargs={k: _encode(v) for k, v in node.kwargs.items()},
            )
        )
    return inputs, CustomLossGraph(nodes=nodes)


async def upload_custom_loss(
    session: SessionContext,
    name: str,
    inputs: list[CustomLossInput],
    graph: CustomLossGraph,
    seq_id: int,
) -> LossHandle:
    """Post a traced loss and wait for its ``loss_id``."""
    session_id = await session.get_session_id()
    request = CreateCustomLossRequest(
        session_id=session_id, custom_loss_seq_id=seq_id, name=name, inputs=inputs, graph=graph
    )
    ids = {"session_id": session_id}
    resp = await session.transport.request(
        "POST", "/api/v1/create_custom_loss", json=request, ids=ids
    )
    ack = decode_response(resp, UntypedAPIFuture)
    created = await session.poll(
        ack.request_id, CreateCustomLossResponse, request_type="CreateCustomLoss", ids=ids
    )
    return LossHandle(
        name=name, inputs=tuple(inputs), session_id=session_id, loss_id=created.loss_id
    )


def check_handle_data(handle: LossHandle, data: Sequence[Datum], session_id: str | None) -> None:
    """Raises ``ValueError`` before any request: the handle is another session's, or a datum
    lacks an input the loss reads, or has it at another rank."""
    if session_id is not None and handle.session_id != session_id:
        raise ValueError(
            f"LossHandle {handle.name!r} was created in session {handle.session_id}; only "
            "clients of that session may use it"
        )
    ranks = {"target_tokens": handle.inputs[0].rank, **{i.name: i.rank for i in handle.inputs[1:]}}
    for i, datum in enumerate(data):
        for key, rank in ranks.items():
            if key not in datum.loss_fn_inputs:
                raise ValueError(f"data[{i}].loss_fn_inputs: loss {handle.name!r} reads {key!r}")
            shape = datum.loss_fn_inputs[key].shape
            got = 1 if shape is None else len(shape)
            if got != rank:
                raise ValueError(
                    f"data[{i}].loss_fn_inputs[{key!r}]: rank {got}, but loss {handle.name!r} "
                    f"declared rank {rank}"
                )
