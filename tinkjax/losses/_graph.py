"""Server-side custom losses: a traced per-datum loss rebuilt from the allow-list, run in JAX.

:func:`parse_loss_graph` turns the wire form of a torch.fx graph (``CustomLossGraph``) into a
:class:`LossGraph`, refusing (:class:`LossGraphError`, naming the node) anything that is not
plain data over the allow-list of ``_graph_ops``: unknown targets, ``get_attr`` and
``call_module``, attribute access other than ``shape``/``ndim``, references to nodes not defined
before (so no cycles), duplicate names, non-finite or oversized constants, graphs past
:data:`MAX_NODES`. Nothing from the request is ever executed: every operation is looked up by
name in a fixed table.

:meth:`LossGraph.evaluate` interprets the graph op by op on one datum's arrays. It is meant to
run under a JAX trace (``jit``, ``grad``, ``eval_shape``): the runtime traces it inside its
fused forward/backward program, so the loss's gradient flows into the LoRA update in one pass,
and every intermediate is checked against :data:`MAX_ELEMENTS` while tracing, before anything
is computed.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from tinkjax.losses._graph_ops import DTYPES, FUNCTIONS, GETATTR_NAMES, METHODS, OpFn
from tinkjax.types import CustomLossGraph, CustomLossInput

__all__ = [
    "MAX_CONSTANTS",
    "MAX_ELEMENTS",
    "MAX_GRAPH_INPUTS",
    "MAX_NODES",
    "LossGraph",
    "LossGraphError",
    "parse_loss_graph",
]

MAX_NODES = 1024
"""The most nodes a graph may have (placeholders and output included)."""
MAX_CONSTANTS = 4096
"""The most constant values (numbers, strings, list items) in all of a graph's arguments."""
MAX_DEPTH = 8
"""How deeply arguments may nest (lists of tuples of ...)."""
MAX_ELEMENTS = 1 << 22
"""The most elements any intermediate tensor may have, per datum."""
MAX_GRAPH_INPUTS = 16
"""``logprobs`` and at most 15 ``loss_fn_inputs``."""

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_INPUT_NAME = re.compile(r"[a-z_][a-z0-9_]{0,63}")
_METRIC_KEY = re.compile(r"custom/[a-z0-9_./-]{1,64}:(sum|mean)")
_MAX_STRING = 128
_IGNORED_CONSTANTS = {"device", "layout", "memory_format"}


class LossGraphError(ValueError):
    """A custom-loss graph that is refused, or that fails on a datum's shapes."""


@dataclass(frozen=True)
class _Ref:
    name: str


@dataclass(frozen=True)
class _Dict:
    items: tuple[tuple[str, Any], ...]


@dataclass(frozen=True)
class _Slice:
    parts: tuple[Any, Any, Any]


@dataclass(frozen=True)
class _Ignored:
    """A device, layout or memory format: meaningless here, accepted and dropped."""

    kind: str


@dataclass(frozen=True)
class _Node:
    op: str
    name: str
    target: str
    args: tuple[Any, ...]
    kwargs: tuple[tuple[str, Any], ...]
    fn: OpFn | None = field(compare=False, hash=False, repr=False)


class _Decoder:
    """Decodes one node's encoded arguments, counting constants against the limits."""

    def __init__(self, node: str, defined: set[str], budget: list[int]) -> None:
        self.node, self.defined, self.budget = node, defined, budget

    def fail(self, why: str) -> LossGraphError:
        return LossGraphError(f"graph.nodes[{self.node!r}]: {why}")

    def spend(self) -> None:
        self.budget[0] -= 1
        if self.budget[0] < 0:
            raise self.fail(f"the graph has more than {MAX_CONSTANTS} constants")

    def decode(self, value: Any, depth: int = 0) -> Any:
        if depth > MAX_DEPTH:
            raise self.fail(f"arguments nest deeper than {MAX_DEPTH}")
        if value is None or isinstance(value, bool | int):
            self.spend()
            if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 2**62:
                raise self.fail(f"integer constant {value} is out of range")
            return value
        if isinstance(value, float):
            self.spend()
            if not math.isfinite(value):
                raise self.fail(f"constant {value} is not finite")
            return value
        if isinstance(value, str):
            self.spend()
            if len(value) > _MAX_STRING:
                raise self.fail(f"a string constant is longer than {_MAX_STRING} characters")
            return value
        if isinstance(value, list):
            self.spend()
            return tuple(self.decode(v, depth + 1) for v in value)
        if isinstance(value, dict) and len(value) == 1:
            ((kind, inner),) = value.items()
            return self.tagged(kind, inner, depth)
        raise self.fail(f"cannot decode argument {_short(value)}")

    def tagged(self, kind: str, inner: Any, depth: int) -> Any:
        if kind == "ref":
            if not isinstance(inner, str) or inner not in self.defined:
                raise self.fail(f"refers to {_short(inner)}, which is not a node defined before it")
            return _Ref(inner)
        if kind == "tuple" and isinstance(inner, list):
            self.spend()
            return tuple(self.decode(v, depth + 1) for v in inner)
        if kind == "dict" and isinstance(inner, dict):
            self.spend()
            for key in inner:
                if len(key) > _MAX_STRING:
                    raise self.fail("a dict key is too long")
            return _Dict(tuple((k, self.decode(v, depth + 1)) for k, v in inner.items()))
        if kind == "slice" and isinstance(inner, list) and len(inner) == 3:
            parts = tuple(self.decode(v, depth + 1) for v in inner)
            for part in parts:
                if not (part is None or isinstance(part, _Ref) or type(part) is int):
                    raise self.fail(f"slice bounds must be ints, None or nodes, got {part!r}")
            return _Slice(parts)
        if kind == "ellipsis" and inner is True:
            return Ellipsis
        if kind == "float" and inner in ("inf", "-inf", "nan"):
            raise self.fail(f"constant {inner} is not finite")
        if kind == "dtype" and isinstance(inner, str):
            if inner not in DTYPES:
                raise self.fail(f"dtype {_short(inner)} is not supported; known: {sorted(DTYPES)}")
            return DTYPES[inner]
        if kind in _IGNORED_CONSTANTS and isinstance(inner, str) and len(inner) <= _MAX_STRING:
            return _Ignored(kind)
        raise self.fail(f"cannot decode argument {_short({kind: inner})}")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


@dataclass(frozen=True, eq=False)
class LossGraph:
    """A validated per-datum loss: ``(logprobs, *inputs) -> (loss, metrics)``.

    Hashable and compared by :attr:`digest` (the canonical JSON of its nodes and inputs), so
    it can be a static argument of a jitted program: one compiled program per graph.

    Attributes:
        name: the loss's name (the traced function's).
        inputs: ``(name, rank)`` of ``logprobs`` then of each ``loss_fn_inputs`` key read.
        metric_keys: the metrics it returns (``custom/<name>:sum`` or ``:mean``).
    """

    name: str
    inputs: tuple[tuple[str, int], ...]
    metric_keys: tuple[str, ...]
    digest: str
    _nodes: tuple[_Node, ...] = field(repr=False)
    _loss: _Ref = field(repr=False)
    _metrics: tuple[tuple[str, _Ref], ...] = field(repr=False)

    def __hash__(self) -> int:
        return hash(self.digest)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LossGraph) and other.digest == self.digest

    @property
    def input_names(self) -> tuple[str, ...]:
        """The ``loss_fn_inputs`` keys the loss reads, in the order it takes them."""
        return tuple(name for name, _ in self.inputs[1:])

    def evaluate(
        self, logprobs: jax.Array, inputs: Sequence[jax.Array]
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """The loss and metrics of one datum (call under a trace: ``jit``/``grad``/``eval_shape``).

        Args:
            logprobs: ``[T]`` or ``[T, K]`` target logprobs (rank ``inputs[0]``'s).
            inputs: one array per :attr:`input_names`, of its declared rank.

        Raises:
            LossGraphError: a rank differs from the declared one, an operation fails on these
                shapes (naming the node), an intermediate exceeds :data:`MAX_ELEMENTS`, or the
                loss or a metric is not a scalar.
        """
        values = [jnp.asarray(v) for v in (logprobs, *inputs)]
        if len(values) != len(self.inputs):
            raise LossGraphError(
                f"loss {self.name!r} takes {len(self.inputs)} inputs, got {len(values)}"
            )
        for (name, rank), value in zip(self.inputs, values, strict=True):
            if np.ndim(value) != rank:
                raise LossGraphError(
                    f"{name}: loss {self.name!r} declared rank {rank}, got shape {np.shape(value)}"
                )
        # torch broadcasts freely; so must the graph, whatever the process's JAX setting.
        with jax.numpy_rank_promotion("allow"):
            return self._run(values)

    def _run(self, values: list[jax.Array]) -> tuple[jax.Array, dict[str, jax.Array]]:
        env: dict[str, Any] = {}
        placeholders = iter(values)
        for node in self._nodes:
            if node.op == "placeholder":
                env[node.name] = next(placeholders)
                continue
            assert node.fn is not None
            args = [_resolve(a, env) for a in node.args]
            kwargs = {k: _resolve(v, env) for k, v in node.kwargs}
            try:
                out = node.fn(*args, **kwargs)
            except (TypeError, ValueError, IndexError, ArithmeticError) as exc:
                raise LossGraphError(
                    f"graph.nodes[{node.name!r}] ({node.target}) failed: {exc}"
                ) from None
            if isinstance(out, jax.Array) and out.size > MAX_ELEMENTS:
                raise LossGraphError(
                    f"graph.nodes[{node.name!r}] ({node.target}) makes a tensor of "
                    f"{out.size} elements; the limit is {MAX_ELEMENTS}"
                )
            env[node.name] = out
        loss = env[self._loss.name]
        metrics = {key: env[ref.name] for key, ref in self._metrics}
        for what, value in [("loss", loss), *metrics.items()]:
            if not isinstance(value, jax.Array) or value.ndim != 0:
                raise LossGraphError(
                    f"loss {self.name!r}: {what} must be a scalar tensor, got "
                    f"{getattr(value, 'shape', type(value).__name__)}"
                )
        return loss, metrics


def _resolve(value: Any, env: Mapping[str, Any]) -> Any:
    if isinstance(value, _Ref):
        return env[value.name]
    if isinstance(value, tuple):
        return tuple(_resolve(v, env) for v in value)
    if isinstance(value, _Dict):
        return {k: _resolve(v, env) for k, v in value.items}
    if isinstance(value, _Slice):
        return slice(*(_resolve(v, env) for v in value.parts))
    if isinstance(value, _Ignored):
        return None
    return value


def _getattr(x: Any, name: str) -> Any:
    return tuple(x.shape) if name == "shape" else x.ndim


def _op_fn(node: Any, args: tuple[Any, ...]) -> OpFn:
    """The allow-listed implementation of a ``call_function``/``call_method`` node."""
    where = f"graph.nodes[{node.name!r}]"
    if node.op == "call_function":
        if node.target in ("getattr", "builtins.getattr"):  # the SDK sends "getattr"
            if len(args) != 2 or not isinstance(args[0], _Ref) or args[1] not in GETATTR_NAMES:
                raise LossGraphError(
                    f"{where}: attribute access getattr{_short(args)} is refused; only "
                    f"{sorted(GETATTR_NAMES)} of a tensor may be read"
                )
            return _getattr
        fn = FUNCTIONS.get(node.target)
        if fn is None:
            raise LossGraphError(
                f"{where}: function {_short(node.target)} is not an allowed operation "
                "(see docs/server.md, 'Server-side custom losses')"
            )
        return fn
    fn = METHODS.get(node.target)
    if fn is None:
        raise LossGraphError(
            f"{where}: method {_short(node.target)} is not an allowed tensor method "
            "(see docs/server.md, 'Server-side custom losses')"
        )
    if not args or not isinstance(args[0], _Ref):
        raise LossGraphError(f"{where}: a method call needs a tensor as its first argument")
    return fn


def parse_loss_graph(
    graph: CustomLossGraph, inputs: Sequence[CustomLossInput], *, name: str
) -> LossGraph:
    """Validates a wire graph against the allow-list and rebuilds it as a :class:`LossGraph`.

    Raises:
        LossGraphError: naming the node (``graph.nodes['mul_1']``) or field refused.
    """
    if not _NAME.fullmatch(name or ""):
        raise LossGraphError(
            f"name: {_short(name)} must be an identifier of at most 128 characters"
        )
    if not 1 <= len(inputs) <= MAX_GRAPH_INPUTS:
        raise LossGraphError(f"inputs: expected 1 to {MAX_GRAPH_INPUTS} inputs, got {len(inputs)}")
    names = [i.name for i in inputs]
    if names[0] != "logprobs" or inputs[0].rank == 0:
        raise LossGraphError("inputs[0]: must be logprobs, of rank 1 ([T]) or 2 ([T, K])")
    for i, item in enumerate(inputs):
        if not _INPUT_NAME.fullmatch(item.name) or names.count(item.name) > 1:
            raise LossGraphError(
                f"inputs[{i}].name: {_short(item.name)} is not a distinct lowercase name"
            )
    nodes = graph.nodes
    if len(nodes) > MAX_NODES:
        raise LossGraphError(f"graph.nodes: {len(nodes)} nodes; the limit is {MAX_NODES}")
    defined: set[str] = set()
    budget = [MAX_CONSTANTS]
    parsed: list[_Node] = []
    placeholders: list[str] = []
    output: Any = None
    for index, node in enumerate(nodes):
        label = node.name if isinstance(node.name, str) and len(node.name) <= 128 else f"#{index}"
        where = f"graph.nodes[{label!r}]"
        if not _NAME.fullmatch(node.name):
            raise LossGraphError(f"{where}: name must be an identifier of at most 128 characters")
        if node.name in defined:
            raise LossGraphError(f"{where}: a second node of the same name")
        if output is not None:
            raise LossGraphError(f"{where}: comes after the output node")
        if len(node.target) > 256:
            raise LossGraphError(f"{where}: target is longer than 256 characters")
        decoder = _Decoder(node.name, defined, budget)
        args = tuple(decoder.decode(a, 1) for a in node.args)
        kwargs = tuple((str(k), decoder.decode(v, 1)) for k, v in node.kwargs.items())
        if node.op == "placeholder":
            if parsed and parsed[-1].op != "placeholder":
                raise LossGraphError(f"{where}: placeholders must come first")
            placeholders.append(node.target)
            fn = None
        elif node.op in ("call_function", "call_method"):
            fn = _op_fn(node, args)
        elif node.op == "output":
            output = args
            fn = None
        else:
            raise LossGraphError(
                f"{where}: op {node.op!r} is refused (a custom loss reads only its inputs and "
                "calls allowed functions and methods)"
            )
        defined.add(node.name)
        if node.op != "output":
            parsed.append(_Node(node.op, node.name, node.target, args, kwargs, fn))
    if placeholders != names:
        raise LossGraphError(
            f"graph: its placeholders {placeholders} must be the inputs {names}, in order"
        )
    loss, metrics = _check_output(output)
    canonical = json.dumps(
        {"name": name, "inputs": [[i.name, i.rank] for i in inputs],
         "nodes": [[n.op, n.name, n.target, n.args, n.kwargs] for n in nodes]},
        sort_keys=True, separators=(",", ":"), default=str,
    )  # fmt: skip
    return LossGraph(
        name=name,
        inputs=tuple((i.name, int(i.rank)) for i in inputs),
        metric_keys=tuple(k for k, _ in metrics),
        digest=hashlib.sha256(canonical.encode()).hexdigest(),
        _nodes=tuple(parsed),
        _loss=loss,
        _metrics=metrics,
    )


def _check_output(output: Any) -> tuple[_Ref, tuple[tuple[str, _Ref], ...]]:
    if output is None:
        raise LossGraphError("graph: has no output node")
    value = output[0] if len(output) == 1 else None
    if not (isinstance(value, tuple) and len(value) == 2):
        raise LossGraphError("graph: the output must be (loss, metrics)")
    loss, metrics = value
    if not isinstance(loss, _Ref):
        raise LossGraphError("graph: the loss must be a tensor computed by the graph")
    if not isinstance(metrics, _Dict):
        raise LossGraphError("graph: the metrics must be a dict")
    for key, ref in metrics.items:
        if not _METRIC_KEY.fullmatch(key):
            raise LossGraphError(
                f"graph: metric {_short(key)} must be named custom/<name>:sum or :mean"
            )
        if not isinstance(ref, _Ref):
            raise LossGraphError(f"graph: metric {key!r} must be a tensor computed by the graph")
    return loss, metrics.items
