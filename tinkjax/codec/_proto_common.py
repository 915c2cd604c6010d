"""Shared pieces of the protobuf codec: dtype tables, buffer helpers and message converters.

Converters between wire Structs and the generated messages (``Tensor``, ``Chunk``, provenance
spans) used by more than one message's encoder or decoder, plus the checks every decoder
shares (malformed bytes, ragged buffers, unknown dtypes, invalid UTF-8).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import numpy.typing as npt
from google.protobuf.message import DecodeError as _PbDecodeError

from tinkjax.errors import DecodeError, TensorError, WireFormatError
from tinkjax.types import (
    DmelChunk,
    EncodedTextChunk,
    ImageAssetPointerChunk,
    ImageChunk,
    ModelInputChunk,
    PromptProvenanceSpan,
    ProvenanceSpan,
    SampledProvenanceSpan,
    TensorData,
    TensorDtype,
)

from ._pb import tinkjax_wire_pb2 as pb
from ._pbreader import fields

INT32_MAX = np.iinfo(np.int32).max
INT32_MIN = np.iinfo(np.int32).min

DTYPE_TO_PB = {"float32": pb.DTYPE_FLOAT32, "int64": pb.DTYPE_INT64}
# Proto dtype → (NumPy dtype of the buffer, public wire dtype).
_PB_TO_DTYPE: dict[int, tuple[np.dtype[Any], TensorDtype]] = {
    pb.DTYPE_FLOAT32: (np.dtype("<f4"), "float32"),
    pb.DTYPE_INT64: (np.dtype("<i8"), "int64"),
    pb.DTYPE_INT32: (np.dtype("<i4"), "int64"),
    pb.DTYPE_BFLOAT16: (np.dtype("<u2"), "float32"),
}


def parse_message(message: Any, data: bytes, what: str) -> Any:
    try:
        message.ParseFromString(data)
    except (_PbDecodeError, RuntimeError, ValueError) as exc:
        raise DecodeError(f"malformed protobuf {what}: {exc}") from None
    return message


def split_bulk(
    data: bytes, message: Any, bulk_field: int, what: str
) -> tuple[Any, list[memoryview]]:
    """``(message parsed from every field but one, views of that repeated field's entries)``:
    the bulk of a large message (its datums or records) stays zero-copy, the small rest goes
    through the generated module."""
    head_parts: list[memoryview] = []
    bulk: list[memoryview] = []
    for number, wire, value, raw in fields(memoryview(data), what):
        if number == bulk_field and wire == 2:
            bulk.append(value)
        else:
            head_parts.append(raw)
    return parse_message(message, b"".join(head_parts), what), bulk


def _le_bytes(arr: npt.NDArray[Any], dtype: np.dtype[Any]) -> bytes:
    return np.ascontiguousarray(arr, dtype=dtype).tobytes()


def checked_frombuffer(
    buf: bytes | memoryview, dtype: np.dtype[Any], field: str
) -> npt.NDArray[Any]:
    if len(buf) % dtype.itemsize:
        raise TensorError(
            f"{len(buf)} bytes is not a whole number of {dtype.itemsize}-byte values", field=field
        )
    return np.frombuffer(buf, dtype=dtype)


def widen(arr: npt.NDArray[Any], pb_dtype: int) -> npt.NDArray[Any]:
    if pb_dtype == pb.DTYPE_BFLOAT16:
        return (arr.astype(np.uint32) << 16).view(np.float32)
    if pb_dtype == pb.DTYPE_INT32:
        return arr.astype(np.int64)
    return arr


def buffer_dtype(pb_dtype: int, field: str) -> tuple[np.dtype[Any], TensorDtype]:
    try:
        return _PB_TO_DTYPE[pb_dtype]
    except KeyError:
        raise TensorError(f"unsupported protobuf dtype {pb_dtype}", field=field) from None


# -- tensors ----------------------------------------------------------------------------------
def tensor_to_pb(td: TensorData, msg: Any) -> None:
    # Response tensors always carry their shape: the official SDK's decoder reshapes to the
    # written shape, and an absent one (``[]``) fails for anything but a single value.
    msg.dtype = DTYPE_TO_PB[td.dtype]
    msg.shape.extend(td.dense_shape)
    np_dtype = np.dtype("<f4") if td.dtype == "float32" else np.dtype("<i8")
    if td.is_sparse:
        csr = msg.sparse_csr
        csr.values = _le_bytes(td.data, np_dtype)
        csr.crow_indices = np.asarray(td.sparse_crow_indices, dtype="<i8").tobytes()
        csr.col_indices = np.asarray(td.sparse_col_indices, dtype="<i8").tobytes()
    else:
        msg.dense = _le_bytes(td.data, np_dtype)


def tensor_from_pb(msg: Any, field: str) -> TensorData:
    np_dtype, dtype = buffer_dtype(msg.dtype, f"{field}.dtype")
    shape = [int(d) for d in msg.shape]
    try:
        if msg.WhichOneof("encoding") == "sparse_csr":
            csr = msg.sparse_csr
            values = widen(checked_frombuffer(csr.values, np_dtype, f"{field}.values"), msg.dtype)
            return TensorData(
                data=values,
                dtype=dtype,
                shape=shape,
                sparse_crow_indices=checked_frombuffer(
                    csr.crow_indices, np.dtype("<i8"), f"{field}.crow_indices"
                ).tolist(),
                sparse_col_indices=checked_frombuffer(
                    csr.col_indices, np.dtype("<i8"), f"{field}.col_indices"
                ).tolist(),
            )
        values = widen(checked_frombuffer(msg.dense, np_dtype, field), msg.dtype)
        return TensorData(data=values, dtype=dtype, shape=shape or None)
    except WireFormatError as exc:
        raise TensorError(
            str(exc).split(": ", 1)[-1], field=f"{field}.{exc.field or ''}".rstrip(".")
        ) from None


# -- model input ------------------------------------------------------------------------------
def chunk_to_pb(chunk: ModelInputChunk, msg: Any, field: str) -> None:
    if isinstance(chunk, EncodedTextChunk):
        toks = chunk.tokens
        if toks.size and (toks.max() > INT32_MAX or toks.min() < INT32_MIN):
            raise TensorError("token id does not fit in int32", field=f"{field}.tokens")
        msg.encoded_text.tokens = toks.astype("<i4").tobytes()
    elif isinstance(chunk, ImageChunk):
        msg.image.data = chunk.data
        msg.image.format = chunk.format
        if chunk.expected_tokens is not None:
            msg.image.expected_tokens = chunk.expected_tokens
    elif isinstance(chunk, DmelChunk):
        msg.dmel.dmel = chunk.dmel
    elif isinstance(chunk, ImageAssetPointerChunk):
        raise WireFormatError(
            "image_asset_pointer chunks cannot be sent as protobuf; use an ImageChunk",
            field=field,
        )
    else:  # pragma: no cover - exhaustive over ModelInputChunk
        raise WireFormatError(f"unknown chunk type {type(chunk).__name__}", field=field)


def chunk_from_pb(msg: Any, field: str) -> ModelInputChunk:
    kind = msg.WhichOneof("chunk")
    if kind == "encoded_text":
        toks = checked_frombuffer(msg.encoded_text.tokens, np.dtype("<i4"), f"{field}.tokens")
        return EncodedTextChunk(tokens=toks.astype(np.int64))
    if kind == "image":
        img = msg.image
        if img.format not in ("png", "jpeg"):
            raise WireFormatError(
                f"unsupported image format {img.format!r}", field=f"{field}.format"
            )
        return ImageChunk(
            data=img.data,
            format=img.format,
            expected_tokens=img.expected_tokens if img.HasField("expected_tokens") else None,
        )
    if kind == "dmel":
        return DmelChunk(dmel=msg.dmel.dmel)
    raise WireFormatError("chunk has no content", field=field)


def spans_to_pb(spans: Iterable[ProvenanceSpan], container: Any) -> None:
    for span in spans:
        msg = container.add()
        arm = msg.sampled_tokens if isinstance(span, SampledProvenanceSpan) else msg.prompt_tokens
        arm.sequence_id = span.sequence_id
        arm.offset = span.offset
        arm.length = span.length


def spans_from_pb(container: Any) -> list[ProvenanceSpan] | None:
    if not len(container):
        return None
    out: list[ProvenanceSpan] = []
    for msg in container:
        kind = msg.WhichOneof("span")
        arm = getattr(msg, kind) if kind else msg.prompt_tokens
        cls = SampledProvenanceSpan if kind == "sampled_tokens" else PromptProvenanceSpan
        out.append(cls(sequence_id=arm.sequence_id, offset=arm.offset, length=arm.length))
    return out


def utf8(buf: memoryview, field: str) -> str:
    try:
        return bytes(buf).decode("utf-8")
    except UnicodeDecodeError:
        raise DecodeError("string is not valid UTF-8", field=field) from None
