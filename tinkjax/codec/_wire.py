"""The two protocol generations as objects: one decision, made once, carried as a value.

SDK ≥ 0.25 sends ``forward_backward`` (and forward-only) requests as protobuf to one path and
accepts protobuf results for forward/backward and sampling; SDK ≤ 0.15 (and the Elixir seed)
sent JSON to ``/forward`` and ``/forward_backward`` and read JSON results. A :class:`Wire` knows,
for its generation, the request paths and content types, how a forward/backward chunk is
encoded (and whether datums can be encoded once for several passes, and how large they then
are), and what a ``retrieve_future`` poll asks for. A client session picks one with
:func:`wire_for` from its configuration and every client calls it; no client branches on the
mode.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

import numpy.typing as npt

from tinkjax.types import Datum, ForwardBackwardRequest, ForwardRequest

from ._futures import PROTOBUF_RESULT_TYPES
from ._json import encode_json
from ._proto_request_write import (
    WeightedChunk,
    encode_datum_prefixes,
    encode_forward_backward_request,
    encode_weighted_request,
)

__all__ = [
    "JSON_WIRE",
    "PROTOBUF_WIRE",
    "EncodedBatch",
    "JsonWire",
    "ProtobufWire",
    "Wire",
    "WireMode",
    "WireRequest",
    "wire_for",
]

#: ``"protobuf"`` (SDK ≥ 0.25, the default) or ``"json"`` (JSON-era servers).
WireMode = Literal["protobuf", "json"]

JSON = "application/json"
PROTOBUF = "application/x-protobuf"
#: The ``Accept`` of a poll whose result the service may send as protobuf.
_PROTOBUF_ACCEPT = "application/x-protobuf, application/json"
#: Bytes of a datum's ``weights`` map entry and of its own length prefix, beyond the encoded
#: fields and the ``4·n`` weight bytes: the estimate the chunking uses (sizes are estimates,
#: as the official SDK's are).
_WEIGHTED_FRAMING = 24


class WireRequest(NamedTuple):
    """One encoded request: POST ``body`` (of ``content_type``) to ``path``."""

    path: str
    body: bytes
    content_type: str


class EncodedBatch:
    """Datums encoded once without their weights, to be sent in several passes, each with
    its own ``[n]`` float32 weights per datum (``forward_backward_custom``'s two passes).

    Attributes:
        lengths: the number of weights of each datum (its target tokens).
        sizes: the bytes each datum takes in a request, its weights included.
    """

    __slots__ = ("lengths", "prefixes", "sizes")

    def __init__(self, data: Sequence[Datum]) -> None:
        self.prefixes = encode_datum_prefixes(data)
        self.lengths = [d.loss_fn_inputs["target_tokens"].dense_shape[0] for d in data]
        self.sizes = [
            len(before) + len(after) + 4 * n + _WEIGHTED_FRAMING
            for (before, after), n in zip(self.prefixes, self.lengths, strict=True)
        ]

    def __len__(self) -> int:
        return len(self.prefixes)

    def chunks(self, counts: Sequence[int], weights: npt.NDArray[Any]) -> list[WeightedChunk]:
        """The batch cut into chunks of ``counts[i]`` datums, completed with ``weights``
        (``[sum(lengths)]``: every datum's weights back to back, sliced without copies)."""
        if sum(counts) != len(self.prefixes):
            raise ValueError(f"counts {list(counts)} do not add up to {len(self.prefixes)} datums")
        chunks, start, pos = [], 0, 0
        for count in counts:
            lengths = self.lengths[start : start + count]
            size = sum(lengths)
            chunks.append(
                WeightedChunk(
                    self.prefixes[start : start + count], lengths, weights[pos : pos + size]
                )
            )
            start, pos = start + count, pos + size
        return chunks


class Wire:
    """What a protocol generation puts on the wire. Use :data:`JSON_WIRE`,
    :data:`PROTOBUF_WIRE` or :func:`wire_for`.

    Attributes:
        mode: the generation's name.
    """

    mode: WireMode

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def encode_fwdbwd(self, request: ForwardRequest | ForwardBackwardRequest) -> WireRequest:
        """The request of one forward/backward (or forward-only) chunk."""
        raise NotImplementedError

    def pre_encode(self, data: Sequence[Datum]) -> EncodedBatch | None:
        """``data`` encoded once for several weighted passes, or ``None`` when this wire (or
        these datums: sparse or 2-D target tokens) needs a :class:`Datum` per pass."""
        raise NotImplementedError

    def encode_weighted(
        self, chunk: WeightedChunk, *, model_id: str, seq_id: int, loss_fn: str, forward_only: bool
    ) -> WireRequest:
        """The request of a chunk of an :class:`EncodedBatch` (no loss config)."""
        raise NotImplementedError

    def poll_accept(self, result_type: type) -> str:
        """The ``Accept`` header of a ``retrieve_future`` poll for a ``result_type``."""
        raise NotImplementedError


class JsonWire(Wire):
    """The JSON era: ``/forward`` and ``/forward_backward`` with JSON bodies, JSON results."""

    mode: WireMode = "json"

    def encode_fwdbwd(self, request: ForwardRequest | ForwardBackwardRequest) -> WireRequest:
        path = (
            "/api/v1/forward" if isinstance(request, ForwardRequest) else "/api/v1/forward_backward"
        )
        return WireRequest(path, encode_json(request), JSON)

    def pre_encode(self, data: Sequence[Datum]) -> EncodedBatch | None:
        return None

    def encode_weighted(
        self, chunk: WeightedChunk, *, model_id: str, seq_id: int, loss_fn: str, forward_only: bool
    ) -> WireRequest:
        raise ValueError("pre-encoded chunks are protobuf; the JSON wire sends Datum chunks")

    def poll_accept(self, result_type: type) -> str:
        return JSON


class ProtobufWire(Wire):
    """SDK ≥ 0.25: every forward/backward chunk as a protobuf ``ForwardBackwardRequest`` to
    ``/forward_backward``; forward/backward and sampling results accepted as protobuf."""

    mode: WireMode = "protobuf"

    def encode_fwdbwd(self, request: ForwardRequest | ForwardBackwardRequest) -> WireRequest:
        return WireRequest(
            "/api/v1/forward_backward", encode_forward_backward_request(request), PROTOBUF
        )

    def pre_encode(self, data: Sequence[Datum]) -> EncodedBatch | None:
        targets = [d.loss_fn_inputs["target_tokens"] for d in data]
        if any(t.is_sparse or len(t.dense_shape) != 1 for t in targets):
            return None  # 2-D weights (possibly CSR) go in Datum objects
        return EncodedBatch(data)

    def encode_weighted(
        self, chunk: WeightedChunk, *, model_id: str, seq_id: int, loss_fn: str, forward_only: bool
    ) -> WireRequest:
        body = encode_weighted_request(
            chunk, model_id=model_id, seq_id=seq_id, loss_fn=loss_fn, forward_only=forward_only
        )
        return WireRequest("/api/v1/forward_backward", body, PROTOBUF)

    def poll_accept(self, result_type: type) -> str:
        return _PROTOBUF_ACCEPT if result_type in PROTOBUF_RESULT_TYPES else JSON


JSON_WIRE: Wire = JsonWire()
PROTOBUF_WIRE: Wire = ProtobufWire()


def wire_for(mode: WireMode) -> Wire:
    """The wire of a generation.

    Raises:
        ValueError: ``mode`` is neither ``"protobuf"`` nor ``"json"``.
    """
    if mode == "protobuf":
        return PROTOBUF_WIRE
    if mode == "json":
        return JSON_WIRE
    raise ValueError(f"wire mode {mode!r} must be 'protobuf' or 'json'")
