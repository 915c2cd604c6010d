"""Protobuf encoder of ``ForwardBackwardRequest`` (forward/backward and forward-only requests).

The datums (the bulk) are written directly over raw little-endian buffers; only small parts go
through the generated module (see ``_pbwriter``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tinkjax.errors import TensorError
from tinkjax.types import (
    Datum,
    EncodedTextChunk,
    ForwardBackwardRequest,
    ForwardRequest,
    TensorData,
)

from ._pb import tinkjax_wire_pb2 as pb
from ._pbwriter import Writer, byte_view, varint
from ._pbwriter import varint_size as _vlen
from ._proto_common import _DTYPE_TO_PB, _INT32_MAX, _INT32_MIN, _chunk_to_pb, _spans_to_pb

__all__ = ["encode_forward_backward_request"]

_NP_OF: dict[str, np.dtype[Any]] = {"float32": np.dtype("<f4"), "int64": np.dtype("<i8")}
# Field 3 (dtype) of a ``Tensor``, per wire dtype.
_DTYPE_TAILS = {name: bytes((0x18, value)) for name, value in _DTYPE_TO_PB.items()}


# -- forward/backward request -----------------------------------------------------------------
def _tensor_tail(dtype: str, shape: list[int] | None) -> bytes:
    """Fields 3 (dtype) and 4 (packed shape) of a ``Tensor``."""
    tail = _DTYPE_TAILS[dtype]
    if shape:
        packed = varint(shape[0]) if len(shape) == 1 else b"".join([varint(d) for d in shape])
        tail += b"\x22" + varint(len(packed)) + packed
    return tail


def _sparse_tensor_writer(td: TensorData) -> Writer:
    w = Writer()
    np_dtype = "<f4" if td.dtype == "float32" else "<i8"
    csr = Writer()
    csr.array_field(1, td.data, np_dtype)
    csr.array_field(2, np.asarray(td.sparse_crow_indices), "<i8")
    csr.array_field(3, np.asarray(td.sparse_col_indices), "<i8")
    w.message_field(2, csr)
    w.raw(_tensor_tail(td.dtype, td.shape))
    return w


def _datum_parts(datum: Datum, index: int, parts: list[bytes | memoryview]) -> int:
    """Append the serialized fields of ``datum`` to ``parts``; return their total length.

    The hot path (text chunks, dense tensors) writes each field as one header (keys and varint
    lengths of the nested messages, computed up front) followed by the raw little-endian
    buffer, so a datum costs a few Python operations whatever its size.
    """
    length = 0
    for j, chunk in enumerate(datum.model_input.chunks):
        if isinstance(chunk, EncodedTextChunk):
            toks = chunk.tokens
            if toks.size and (toks.max() > _INT32_MAX or toks.min() < _INT32_MIN):
                raise TensorError(
                    "token id does not fit in int32",
                    field=f"data[{index}].model_input[{j}].tokens",
                )
            if toks.size:
                data = byte_view(toks.astype("<i4"))
                n = len(data)
                text_len = 1 + _vlen(n) + n  # EncodedTextChunk {1: tokens}
                chunk_len = 1 + _vlen(text_len) + text_len  # Chunk {1: encoded_text}
                head = (
                    b"\x0a" + varint(chunk_len) + b"\x0a" + varint(text_len) + b"\x0a" + varint(n)
                )
                parts.append(head)
                parts.append(data)
                length += len(head) + n
            else:  # an empty encoded_text arm
                parts.append(b"\x0a\x02\x0a\x00")
                length += 4
        else:
            cmsg = pb.Chunk()
            _chunk_to_pb(chunk, cmsg, f"data[{index}].model_input[{j}]")
            body = cmsg.SerializeToString()
            head = b"\x0a" + varint(len(body))
            parts.append(head)
            parts.append(body)
            length += len(head) + len(body)
    for name, td in datum.loss_fn_inputs.items():
        name_b = name.encode("utf-8")
        name_field = b"\x0a" + varint(len(name_b)) + name_b
        if td.is_sparse:
            tw = _sparse_tensor_writer(td)
            entry = Writer()
            entry.raw(name_field)
            entry.message_field(2, tw)
            head = b"\x12" + varint(entry.length)
            parts.append(head)
            parts.extend(entry.parts)
            length += len(head) + entry.length
            continue
        arr = td.data
        if arr.dtype != _NP_OF[td.dtype] or not arr.flags.c_contiguous:
            arr = np.ascontiguousarray(arr, dtype=_NP_OF[td.dtype])
        data = byte_view(arr)
        n = len(data)
        tail = _tensor_tail(td.dtype, td.shape)
        tensor_len = 1 + _vlen(n) + n + len(tail)
        entry_len = len(name_field) + 1 + _vlen(tensor_len) + tensor_len
        head = (
            b"\x12"
            + varint(entry_len)
            + name_field
            + b"\x12"
            + varint(tensor_len)
            + b"\x0a"
            + varint(n)
        )
        parts.append(head)
        parts.append(data)
        parts.append(tail)
        length += len(head) + n + len(tail)
    if datum.model_input_spans is not None or datum.loss_fn_input_spans is not None:
        spans = pb.Datum()
        _spans_to_pb(datum.model_input_spans or (), spans.model_input_spans)
        _spans_to_pb(datum.loss_fn_input_spans or (), spans.loss_fn_input_spans)
        body = spans.SerializeToString()
        parts.append(body)
        length += len(body)
    return length


def encode_forward_backward_request(request: ForwardBackwardRequest | ForwardRequest) -> bytes:
    """Serialize a forward/backward (or forward-only) request as ``ForwardBackwardRequest``.

    The small scalar and config fields go through the generated module; the datums (the bulk)
    are written directly by :class:`Writer`.
    """
    head = pb.ForwardBackwardRequest()
    fb_input = (
        request.forward_input
        if isinstance(request, ForwardRequest)
        else request.forward_backward_input
    )
    head.model_id = request.model_id
    head.seq_id = request.seq_id if request.seq_id is not None else 0
    head.forward_only = isinstance(request, ForwardRequest)
    head.loss_fn = fb_input.loss_fn
    for cfg_key, value in (fb_input.loss_fn_config or {}).items():
        if isinstance(value, str):
            head.loss_fn_config_v2[cfg_key].text = value
        else:
            head.loss_fn_config[cfg_key] = float(value)
            head.loss_fn_config_v2[cfg_key].number = float(value)
    parts: list[bytes | memoryview] = [head.SerializeToString()]
    for i, datum in enumerate(fb_input.data):
        slot = len(parts)
        parts.append(b"")
        size = _datum_parts(datum, i, parts)
        parts[slot] = b"\x1a" + varint(size)
    return b"".join(parts)
