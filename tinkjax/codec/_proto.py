"""Protobuf codec for the three binary messages of the current protocol.

``ForwardBackwardRequest`` (client → server), ``ForwardBackwardOutput`` and ``SampleResponse``
(server → client), each in both directions: the client encodes requests and decodes results,
the local backend does the reverse. Dense tensors go through raw little-endian buffers
(``ndarray.tobytes`` / ``np.frombuffer``), never through Python lists.

The codec is split by message: ``_proto_request_write`` / ``_proto_request_read`` (the request),
``_proto_output`` and ``_proto_sample``, over the shared helpers of ``_proto_common``. This
module gathers the public functions.
"""

from __future__ import annotations

from ._proto_output import decode_forward_backward_output, encode_forward_backward_output
from ._proto_request_read import decode_forward_backward_request
from ._proto_request_write import encode_forward_backward_request
from ._proto_sample import decode_sample_response, encode_sample_response

__all__ = [
    "decode_forward_backward_output",
    "decode_forward_backward_request",
    "decode_sample_response",
    "encode_forward_backward_output",
    "encode_forward_backward_request",
    "encode_sample_response",
]
