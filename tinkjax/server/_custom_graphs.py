"""Server-side custom losses: ``/create_custom_loss`` and ``forward_backward(..., "custom")``.

A session uploads a traced per-datum loss (``ServiceClient.create_custom_loss``); the graph is
rebuilt from the allow-list (:func:`tinkjax.losses.parse_loss_graph`: a 400 naming the node
for anything else) and kept under a fresh ``loss_id`` for that session only. A
``forward_backward`` with ``loss_fn="custom"`` and ``loss_fn_config={"loss_id": id}`` from a
model of the same session runs it inside the runtime's fused forward/backward: one pass.

Losses live in memory with their session (freed when it ends), at most
:data:`MAX_LOSSES_PER_SESSION` per session and :data:`MAX_LOSSES` in all. A retried upload
(same session and ``custom_loss_seq_id``, same graph) is answered with the same loss.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tinkjax.losses import LossGraph, LossGraphError, parse_loss_graph
from tinkjax.server._errors import ApiError
from tinkjax.server._futures import FutureTable
from tinkjax.server._jobs import new_request_id
from tinkjax.types import (
    CreateCustomLossRequest,
    CreateCustomLossResponse,
    Datum,
    UntypedAPIFuture,
)

__all__ = ["MAX_LOSSES", "MAX_LOSSES_PER_SESSION", "CustomLosses"]

MAX_LOSSES_PER_SESSION = 64
MAX_LOSSES = 4096


@dataclass(frozen=True)
class _Stored:
    session_id: str
    seq_id: int
    graph: LossGraph
    loss_id: str
    request_id: str


class CustomLosses:
    """The uploaded losses of every live session (thread-safe)."""

    def __init__(self, futures: FutureTable) -> None:
        self.futures = futures
        self._lock = threading.Lock()
        self._by_id: dict[str, _Stored] = {}
        self._by_seq: dict[tuple[str, int], _Stored] = {}

    def create(self, req: CreateCustomLossRequest) -> UntypedAPIFuture:
        """Validates and stores ``req``'s graph; the future resolves to its ``loss_id``.

        The session is the caller's (checked by the tenancy before this is called).
        """
        if type(req.custom_loss_seq_id) is not int or req.custom_loss_seq_id < 0:
            raise ApiError(
                400, f"custom_loss_seq_id: expected an int >= 0, got {req.custom_loss_seq_id!r}",
                field="custom_loss_seq_id",
            )  # fmt: skip
        try:
            graph = parse_loss_graph(req.graph, req.inputs, name=req.name)
        except LossGraphError as exc:
            field = str(exc).split(":", 1)[0]
            raise ApiError(400, f"create_custom_loss refused: {exc}", field=field) from None
        key = (req.session_id, req.custom_loss_seq_id)
        with self._lock:
            old = self._by_seq.get(key)
            if old is not None:
                if old.graph != graph:
                    raise ApiError(
                        400,
                        f"custom_loss_seq_id: {req.custom_loss_seq_id} was already used in this "
                        "session for a different loss",
                        field="custom_loss_seq_id",
                    )
                return UntypedAPIFuture(request_id=old.request_id)
            mine = sum(1 for s in self._by_id.values() if s.session_id == req.session_id)
            if mine >= MAX_LOSSES_PER_SESSION or len(self._by_id) >= MAX_LOSSES:
                limit = MAX_LOSSES_PER_SESSION if mine >= MAX_LOSSES_PER_SESSION else MAX_LOSSES
                raise ApiError(
                    400, f"create_custom_loss refused: at most {limit} custom losses are kept "
                    "(per session, and in all); reuse a LossHandle", field="graph",
                )  # fmt: skip
            stored = _Stored(
                req.session_id, req.custom_loss_seq_id, graph,
                f"loss-{uuid.uuid4().hex}", new_request_id(),
            )  # fmt: skip
            self._by_id[stored.loss_id] = stored
            self._by_seq[key] = stored
        self.futures.create(stored.request_id, "create_custom_loss")
        self.futures.complete(stored.request_id, CreateCustomLossResponse(loss_id=stored.loss_id))
        return UntypedAPIFuture(request_id=stored.request_id)

    def lookup(self, loss_fn_config: Mapping[str, Any] | None, session_id: str | None) -> LossGraph:
        """The graph a ``"custom"`` request names; 400 for a malformed config, 404 for a loss
        that is unknown or not the model's session's."""
        config = dict(loss_fn_config or {})
        loss_id = config.pop("loss_id", None)
        if not isinstance(loss_id, str):
            raise ApiError(
                400, "loss_fn_config: loss_fn 'custom' needs {'loss_id': <id from "
                f"create_custom_loss>}}, got {loss_fn_config!r}", field="loss_fn_config",
            )  # fmt: skip
        if config:
            raise ApiError(
                400, f"loss_fn_config: unknown key(s) {sorted(config)} for loss 'custom'; "
                "accepted: loss_id", field="loss_fn_config",
            )  # fmt: skip
        with self._lock:
            stored = self._by_id.get(loss_id)
        if stored is None or stored.session_id != session_id:
            raise ApiError(
                404, f"loss_fn_config['loss_id']: unknown custom loss {loss_id!r} (a loss is "
                "usable only by models of the session that created it, while it lives)",
                field="loss_fn_config",
            )  # fmt: skip
        return stored.graph

    def forget_session(self, session_id: str) -> None:
        """Drop an ended session's losses."""
        with self._lock:
            for loss_id, stored in list(self._by_id.items()):
                if stored.session_id == session_id:
                    del self._by_id[loss_id]
                    del self._by_seq[(stored.session_id, stored.seq_id)]

    def __len__(self) -> int:
        with self._lock:
            return len(self._by_id)


def custom_item(cfg: Any, model_id: str, data: Sequence[Datum], graph: LossGraph) -> Any:
    """A ``"custom"`` request as a runtime item of datums checked for ``graph`` (400 naming
    the datum, field or node)."""
    from tinkjax.models import DatumArrays, FwdBwdItem, validate_custom_datum

    datums = []
    for i, datum in enumerate(data):
        try:
            tokens = datum.model_input.to_numpy()
            inputs = {k: td.to_numpy() for k, td in datum.loss_fn_inputs.items()}
        except ValueError as exc:
            raise ApiError(400, f"data[{i}]: {exc}", field=f"data[{i}]") from None
        arrays = DatumArrays(input_tokens=np.asarray(tokens), loss_fn_inputs=inputs)
        try:
            valid = validate_custom_datum(
                arrays, graph, where=f"data[{i}]", vocab=cfg.vocab_size,
                max_len=cfg.max_seq_len, dtype=np.dtype(np.float32),
            )  # fmt: skip
        except ValueError as exc:
            raise ApiError(400, str(exc), field=f"data[{i}]") from None
        datums.append(valid)
    return FwdBwdItem(adapter_id=model_id, datums=datums, loss_fn="custom", custom_loss=graph)
