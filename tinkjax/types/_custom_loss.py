"""Server-side custom losses: a traced per-datum loss as plain data (``create_custom_loss``).

The graph is torch.fx's node list, node for node; nothing in it is executable until the server
rebuilds it from its own allow-list of operations (``tinkjax.losses.parse_loss_graph``).
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from ._base import StrictWire, Wire

__all__ = [
    "CreateCustomLossRequest",
    "CreateCustomLossResponse",
    "CustomLossGraph",
    "CustomLossInput",
    "CustomLossInputRank",
    "CustomLossNode",
    "CustomLossNodeOp",
]

CustomLossInputRank = Literal[0, 1, 2]
"""An input's rank: 0 a scalar, 1 ``[T]``, 2 ``[T, K]``."""

CustomLossNodeOp = Literal[
    "placeholder", "get_attr", "call_function", "call_method", "call_module", "output"
]


class CustomLossInput(StrictWire, frozen=True, kw_only=True):
    """``logprobs`` or a ``loss_fn_inputs`` key the loss reads, with the rank every datum's
    value has."""

    name: str
    rank: CustomLossInputRank


class CustomLossNode(StrictWire, frozen=True, kw_only=True):
    """One torch.fx node: ``target`` is the parameter name (placeholder), the qualified
    function name (``torch.exp``, ``operator.mul``), the method name, or ``output``.

    ``args``/``kwargs`` are encoded: JSON scalars and lists stand for themselves; anything else
    is a one-key object (``{"ref": node}``, ``{"tuple": [...]}``, ``{"dict": {...}}``,
    ``{"slice": [start, stop, step]}``, ``{"ellipsis": true}``, ``{"float": "inf"}``,
    ``{"dtype": "float32"}``, ``{"device": "cpu"}``, ``{"layout": ...}``,
    ``{"memory_format": ...}``)."""

    op: CustomLossNodeOp
    name: str
    target: str
    args: list[Any] = msgspec.field(default_factory=list)
    kwargs: dict[str, Any] = msgspec.field(default_factory=dict)


class CustomLossGraph(StrictWire, frozen=True, kw_only=True):
    """A traced loss: its nodes in execution order."""

    format: Literal[1] = 1
    nodes: list[CustomLossNode]


class CreateCustomLossRequest(StrictWire, frozen=True, kw_only=True):
    """``/create_custom_loss``: the graph and its inputs, ``logprobs`` first."""

    session_id: str
    custom_loss_seq_id: int
    name: str
    inputs: list[CustomLossInput]
    graph: CustomLossGraph
    type: Literal["create_custom_loss"] = "create_custom_loss"


class CreateCustomLossResponse(Wire, frozen=True, kw_only=True):
    """The stored loss's id, for ``forward_backward(data, "custom", {"loss_id": id})``."""

    loss_id: str
    type: Literal["create_custom_loss"] = "create_custom_loss"
