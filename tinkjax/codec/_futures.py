"""Decoding ``retrieve_future`` answers, whose JSON results are an untagged union.

The envelope is read first (``type``, ``error``, ``status``); only a real result is decoded
into the expected type. Protobuf bodies are decoded by the protobuf codec.
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec

from tinkjax.types import (
    ForwardBackwardOutput,
    MetadataOnlyResponse,
    RequestFailedResponse,
    SampleResponse,
    TryAgainResponse,
)

from ._json import decode_json
from ._proto import decode_forward_backward_output, decode_sample_response

__all__ = ["PROTOBUF_RESULT_TYPES", "FutureAnswer", "decode_future_answer"]

T = TypeVar("T")

#: Result types the service sends as protobuf when the poll accepts it.
PROTOBUF_RESULT_TYPES: frozenset[type] = frozenset({ForwardBackwardOutput, SampleResponse})

FutureAnswer = TryAgainResponse | RequestFailedResponse | MetadataOnlyResponse


class _Envelope(msgspec.Struct):
    type: Any = None
    error: Any = None
    status: Any = None


def decode_future_answer(
    body: bytes, result_type: type[T], *, content_type: str = "application/json"
) -> T | FutureAnswer:
    """Decode a ``retrieve_future`` body into the result or a control answer.

    Args:
        body: the HTTP body.
        result_type: the type the future resolves to.
        content_type: the answer's ``Content-Type``; protobuf bodies decode directly.

    Returns:
        ``TryAgainResponse`` (still pending), ``RequestFailedResponse`` (the request failed),
        ``MetadataOnlyResponse`` (poll again without metadata-only) or the decoded result.
    """
    if "application/x-protobuf" in content_type:
        if result_type is ForwardBackwardOutput:
            return decode_forward_backward_output(body)  # type: ignore[return-value]
        if result_type is SampleResponse:
            return decode_sample_response(body)  # type: ignore[return-value]
        raise TypeError(f"{result_type.__name__} is never sent as protobuf")
    envelope = decode_json(body, _Envelope)
    if envelope.type == "try_again":
        return decode_json(body, TryAgainResponse)
    if envelope.error is not None:
        return decode_json(body, RequestFailedResponse)
    if envelope.status == "complete_metadata":
        return decode_json(body, MetadataOnlyResponse)
    return decode_json(body, result_type)
