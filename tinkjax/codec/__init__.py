"""Codecs: wire types ⇄ JSON (msgspec) and ⇄ protobuf (the ``tinker_public`` schema), and the
two protocol generations as :class:`Wire` objects."""

from ._futures import PROTOBUF_RESULT_TYPES, FutureAnswer, decode_future_answer
from ._json import decode_json, encode_json, to_wire_builtins
from ._proto import (
    decode_forward_backward_output,
    decode_forward_backward_request,
    decode_sample_response,
    encode_forward_backward_output,
    encode_forward_backward_request,
    encode_sample_response,
)
from ._proto_request_write import WeightedChunk
from ._wire import (
    JSON_WIRE,
    PROTOBUF_WIRE,
    EncodedBatch,
    JsonWire,
    ProtobufWire,
    Wire,
    WireMode,
    WireRequest,
    wire_for,
)

__all__ = [
    "JSON_WIRE",
    "PROTOBUF_RESULT_TYPES",
    "PROTOBUF_WIRE",
    "EncodedBatch",
    "FutureAnswer",
    "JsonWire",
    "ProtobufWire",
    "WeightedChunk",
    "Wire",
    "WireMode",
    "WireRequest",
    "decode_forward_backward_output",
    "decode_forward_backward_request",
    "decode_future_answer",
    "decode_json",
    "decode_sample_response",
    "encode_forward_backward_output",
    "encode_forward_backward_request",
    "encode_json",
    "encode_sample_response",
    "to_wire_builtins",
    "wire_for",
]
