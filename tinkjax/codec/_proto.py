"""Protobuf codec for the three binary messages of the current protocol.

``ForwardBackwardRequest`` (client → server), ``ForwardBackwardOutput`` and ``SampleResponse``
(server → client), each in both directions: the client encodes requests and decodes results,
the local backend does the reverse. Dense tensors go through raw little-endian buffers
(``ndarray.tobytes`` / ``np.frombuffer``), never through Python lists.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from google.protobuf.message import DecodeError as _PbDecodeError

from tinkjax.errors import DecodeError, TensorError, WireFormatError
from tinkjax.types import (
    Datum,
    DmelChunk,
    EncodedTextChunk,
    ForwardBackwardInput,
    ForwardBackwardOutput,
    ForwardBackwardRequest,
    ForwardRequest,
    ImageAssetPointerChunk,
    ImageChunk,
    ModelInput,
    ModelInputChunk,
    PromptAltTokens,
    PromptProvenanceSpan,
    ProvenanceSpan,
    SampledProvenanceSpan,
    SampledSequence,
    SampleResponse,
    TensorData,
    TensorDtype,
    TopkLogprobs,
)

from ._pb import tinkjax_wire_pb2 as pb
from ._pbreader import _varint as _pb_varint
from ._pbreader import fields, only_bytes_field, packed_varints
from ._pbwriter import Writer, byte_view, varint
from ._pbwriter import varint_size as _vlen

__all__ = [
    "decode_forward_backward_output",
    "decode_forward_backward_request",
    "decode_sample_response",
    "encode_forward_backward_output",
    "encode_forward_backward_request",
    "encode_sample_response",
]

_INT32_MAX = np.iinfo(np.int32).max
_INT32_MIN = np.iinfo(np.int32).min

_DTYPE_TO_PB = {"float32": pb.DTYPE_FLOAT32, "int64": pb.DTYPE_INT64}
# Proto dtype → (NumPy dtype of the buffer, public wire dtype).
_PB_TO_DTYPE: dict[int, tuple[np.dtype[Any], TensorDtype]] = {
    pb.DTYPE_FLOAT32: (np.dtype("<f4"), "float32"),
    pb.DTYPE_INT64: (np.dtype("<i8"), "int64"),
    pb.DTYPE_INT32: (np.dtype("<i4"), "int64"),
    pb.DTYPE_BFLOAT16: (np.dtype("<u2"), "float32"),
}
_I4 = np.dtype("<i4")
_NP_OF: dict[str, np.dtype[Any]] = {"float32": np.dtype("<f4"), "int64": np.dtype("<i8")}
# Field 3 (dtype) of a ``Tensor``, per wire dtype.
_DTYPE_TAILS = {name: bytes((0x18, value)) for name, value in _DTYPE_TO_PB.items()}
_STOP_TO_PB = {"stop": pb.STOP_REASON_STOP, "length": pb.STOP_REASON_LENGTH}
_PB_TO_STOP = {pb.STOP_REASON_STOP: "stop", pb.STOP_REASON_LENGTH: "length"}


def _parse(message: Any, data: bytes, what: str) -> Any:
    try:
        message.ParseFromString(data)
    except (_PbDecodeError, RuntimeError, ValueError) as exc:
        raise DecodeError(f"malformed protobuf {what}: {exc}") from None
    return message


def _le_bytes(arr: npt.NDArray[Any], dtype: np.dtype[Any]) -> bytes:
    return np.ascontiguousarray(arr, dtype=dtype).tobytes()


def _frombuffer(buf: bytes | memoryview, dtype: np.dtype[Any], field: str) -> npt.NDArray[Any]:
    if len(buf) % dtype.itemsize:
        raise TensorError(
            f"{len(buf)} bytes is not a whole number of {dtype.itemsize}-byte values", field=field
        )
    return np.frombuffer(buf, dtype=dtype)


def _widen(arr: npt.NDArray[Any], pb_dtype: int) -> npt.NDArray[Any]:
    if pb_dtype == pb.DTYPE_BFLOAT16:
        return (arr.astype(np.uint32) << 16).view(np.float32)
    if pb_dtype == pb.DTYPE_INT32:
        return arr.astype(np.int64)
    return arr


def _buffer_dtype(pb_dtype: int, field: str) -> tuple[np.dtype[Any], TensorDtype]:
    try:
        return _PB_TO_DTYPE[pb_dtype]
    except KeyError:
        raise TensorError(f"unsupported protobuf dtype {pb_dtype}", field=field) from None


# -- tensors ----------------------------------------------------------------------------------
def _tensor_to_pb(td: TensorData, msg: Any) -> None:
    # Response tensors always carry their shape: the official SDK's decoder reshapes to the
    # written shape, and an absent one (``[]``) fails for anything but a single value.
    msg.dtype = _DTYPE_TO_PB[td.dtype]
    msg.shape.extend(td.dense_shape)
    np_dtype = np.dtype("<f4") if td.dtype == "float32" else np.dtype("<i8")
    if td.is_sparse:
        csr = msg.sparse_csr
        csr.values = _le_bytes(td.data, np_dtype)
        csr.crow_indices = np.asarray(td.sparse_crow_indices, dtype="<i8").tobytes()
        csr.col_indices = np.asarray(td.sparse_col_indices, dtype="<i8").tobytes()
    else:
        msg.dense = _le_bytes(td.data, np_dtype)


def _tensor_from_pb(msg: Any, field: str) -> TensorData:
    np_dtype, dtype = _buffer_dtype(msg.dtype, f"{field}.dtype")
    shape = [int(d) for d in msg.shape]
    try:
        if msg.WhichOneof("encoding") == "sparse_csr":
            csr = msg.sparse_csr
            values = _widen(_frombuffer(csr.values, np_dtype, f"{field}.values"), msg.dtype)
            return TensorData(
                data=values,
                dtype=dtype,
                shape=shape,
                sparse_crow_indices=_frombuffer(
                    csr.crow_indices, np.dtype("<i8"), f"{field}.crow_indices"
                ).tolist(),
                sparse_col_indices=_frombuffer(
                    csr.col_indices, np.dtype("<i8"), f"{field}.col_indices"
                ).tolist(),
            )
        values = _widen(_frombuffer(msg.dense, np_dtype, field), msg.dtype)
        return TensorData(data=values, dtype=dtype, shape=shape or None)
    except WireFormatError as exc:
        raise TensorError(str(exc).split(": ", 1)[-1], field=f"{field}.{exc.field or ''}".rstrip(".")) from None


# -- model input ------------------------------------------------------------------------------
def _chunk_to_pb(chunk: ModelInputChunk, msg: Any, field: str) -> None:
    if isinstance(chunk, EncodedTextChunk):
        toks = chunk.tokens
        if toks.size and (toks.max() > _INT32_MAX or toks.min() < _INT32_MIN):
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


def _chunk_from_pb(msg: Any, field: str) -> ModelInputChunk:
    kind = msg.WhichOneof("chunk")
    if kind == "encoded_text":
        toks = _frombuffer(msg.encoded_text.tokens, np.dtype("<i4"), f"{field}.tokens")
        return EncodedTextChunk(tokens=toks.astype(np.int64))
    if kind == "image":
        img = msg.image
        if img.format not in ("png", "jpeg"):
            raise WireFormatError(f"unsupported image format {img.format!r}", field=f"{field}.format")
        return ImageChunk(
            data=img.data,
            format=img.format,
            expected_tokens=img.expected_tokens if img.HasField("expected_tokens") else None,
        )
    if kind == "dmel":
        return DmelChunk(dmel=msg.dmel.dmel)
    raise WireFormatError("chunk has no content", field=field)


def _spans_to_pb(spans: Iterable[ProvenanceSpan], container: Any) -> None:
    for span in spans:
        msg = container.add()
        arm = msg.sampled_tokens if isinstance(span, SampledProvenanceSpan) else msg.prompt_tokens
        arm.sequence_id = span.sequence_id
        arm.offset = span.offset
        arm.length = span.length


def _spans_from_pb(container: Any) -> list[ProvenanceSpan] | None:
    if not len(container):
        return None
    out: list[ProvenanceSpan] = []
    for msg in container:
        kind = msg.WhichOneof("span")
        arm = getattr(msg, kind) if kind else msg.prompt_tokens
        cls = SampledProvenanceSpan if kind == "sampled_tokens" else PromptProvenanceSpan
        out.append(cls(sequence_id=arm.sequence_id, offset=arm.offset, length=arm.length))
    return out


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
                head = (b"\x0a" + varint(chunk_len) + b"\x0a" + varint(text_len)
                        + b"\x0a" + varint(n))
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
        head = (b"\x12" + varint(entry_len) + name_field + b"\x12" + varint(tensor_len)
                + b"\x0a" + varint(n))
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


def _utf8(buf: memoryview, field: str) -> str:
    try:
        return bytes(buf).decode("utf-8")
    except UnicodeDecodeError:
        raise DecodeError("string is not valid UTF-8", field=field) from None


def _within(exc: WireFormatError, field: str) -> WireFormatError:
    """``exc`` (raised by a type's own check) re-anchored under the tensor's ``field`` path."""
    if exc.field and exc.field.startswith(field):
        return exc
    inner = str(exc).split(": ", 1)[-1] if exc.field else str(exc)
    return TensorError(inner, field=f"{field}.{exc.field}" if exc.field else field)


def _dense_layout(buf: memoryview) -> tuple[memoryview, int, list[int] | None] | None:
    """``(dense, dtype, shape)`` of a ``Tensor`` laid out as writers emit it, else ``None``.

    The common layout is ``dense`` (1), ``dtype`` (3, one byte), then an optional packed
    ``shape`` (4); anything else (CSR, other field orders, repeats, malformed bytes) returns
    ``None`` and goes through the general field loop, which reports errors with their path.
    """
    try:
        return _dense_layout_or_raise(buf)
    except DecodeError:
        return None


def _dense_layout_or_raise(buf: memoryview) -> tuple[memoryview, int, list[int] | None] | None:
    end = len(buf)
    if end < 2 or buf[0] != 0x0A:
        return None
    size = buf[1]
    pos = 2
    if size >= 0x80:
        size, pos = _pb_varint(buf, 1, end, "Tensor")
    stop = pos + size
    if stop + 2 > end or buf[stop] != 0x18 or buf[stop + 1] >= 0x80:
        return None
    dense = buf[pos:stop]
    pb_dtype = buf[stop + 1]
    pos = stop + 2
    if pos == end:
        return dense, pb_dtype, None
    if buf[pos] != 0x22:
        return None
    size, pos = _pb_varint(buf, pos + 1, end, "Tensor")
    if pos + size != end:
        return None
    return dense, pb_dtype, packed_varints(buf[pos:end], "Tensor.shape")


def _entry_layout(buf: memoryview) -> tuple[memoryview, memoryview] | None:
    """``(key, value)`` of a map entry laid out as writers emit it (key 1, then value 2)."""
    end = len(buf)
    if end < 2 or buf[0] != 0x0A or buf[1] >= 0x80:
        return None
    stop = 2 + buf[1]
    if stop >= end or buf[stop] != 0x12:
        return None
    try:
        size, pos = _pb_varint(buf, stop + 1, end, "map entry")
    except DecodeError:
        return None
    if pos + size != end:
        return None
    return buf[2:stop], buf[pos:end]


def _read_tensor(buf: memoryview, field: str) -> TensorData:
    layout = _dense_layout(buf)
    if layout is not None:
        dense_buf, pb_type, dims = layout
        np_dtype, dtype = _buffer_dtype(pb_type, f"{field}.dtype")
        try:
            values = _widen(_frombuffer(dense_buf, np_dtype, field), pb_type)
            return TensorData(data=values, dtype=dtype, shape=dims or None)
        except WireFormatError as exc:
            raise _within(exc, field) from None
    dense: memoryview | None = None
    csr: memoryview | None = None
    pb_dtype = 0
    shape: list[int] = []
    for number, wire, value, _ in fields(buf, field):
        if number == 1 and wire == 2:
            dense, csr = value, None
        elif number == 2 and wire == 2:
            csr, dense = value, None
        elif number == 3 and wire == 0:
            pb_dtype = int(value)
        elif number == 4 and wire == 2:
            shape.extend(packed_varints(value, f"{field}.shape"))
        elif number == 4 and wire == 0:
            shape.append(int(value))
    np_dtype, dtype = _buffer_dtype(pb_dtype, f"{field}.dtype")
    try:
        if csr is not None:
            parts: dict[int, memoryview] = {}
            for number, wire, value, _ in fields(csr, f"{field}.sparse_csr"):
                if wire == 2 and number in (1, 2, 3):
                    parts[number] = value
            empty = memoryview(b"")
            values = _widen(_frombuffer(parts.get(1, empty), np_dtype, f"{field}.values"), pb_dtype)
            return TensorData(
                data=values,
                dtype=dtype,
                shape=shape,
                sparse_crow_indices=_frombuffer(
                    parts.get(2, empty), np.dtype("<i8"), f"{field}.crow_indices"
                ).tolist(),
                sparse_col_indices=_frombuffer(
                    parts.get(3, empty), np.dtype("<i8"), f"{field}.col_indices"
                ).tolist(),
            )
        values = _widen(_frombuffer(dense if dense is not None else memoryview(b""), np_dtype,
                                    field), pb_dtype)
        return TensorData(data=values, dtype=dtype, shape=shape or None)
    except WireFormatError as exc:
        raise _within(exc, field) from None


def _read_chunk(buf: memoryview, field: str) -> ModelInputChunk:
    text = only_bytes_field(buf, 1, field)
    if text is not None:  # the hot path: Chunk{encoded_text{tokens}}
        tokens = only_bytes_field(text, 1, field) if len(text) else memoryview(b"")
        if tokens is not None:
            # int32 → a new int64 array, which the chunk keeps without another copy
            return EncodedTextChunk(tokens=_frombuffer(tokens, _I4, f"{field}.tokens"))
    text = None
    other = False
    for number, wire, value, _ in fields(buf, field):
        if number == 1 and wire == 2:
            text, other = value, False
        elif number in (2, 3):
            text, other = None, True
    if other or text is None:
        return _chunk_from_pb(_parse(pb.Chunk(), bytes(buf), field), field)
    tokens_buf: memoryview = memoryview(b"")
    for number, wire, value, _ in fields(text, f"{field}.encoded_text"):
        if number == 1 and wire == 2:
            tokens_buf = value
    return EncodedTextChunk(tokens=_frombuffer(tokens_buf, _I4, f"{field}.tokens"))


def _read_datum(buf: memoryview, index: int) -> Datum:
    where = f"data[{index}]"
    chunks: list[ModelInputChunk] = []
    inputs: dict[str, TensorData] = {}
    rest: list[memoryview] = []
    for number, wire, value, raw in fields(buf, where):
        if number == 1 and wire == 2:
            chunks.append(_read_chunk(value, f"{where}.model_input[{len(chunks)}]"))
        elif number == 2 and wire == 2:
            name = ""
            tensor_buf: memoryview = memoryview(b"")
            entry = _entry_layout(value)
            if entry is not None:
                name = _utf8(entry[0], f"{where}.loss_fn_inputs")
                tensor_buf = entry[1]
            else:
                for n, w, v, _ in fields(value, f"{where}.loss_fn_inputs"):
                    if n == 1 and w == 2:
                        name = _utf8(v, f"{where}.loss_fn_inputs")
                    elif n == 2 and w == 2:
                        tensor_buf = v
            inputs[name] = _read_tensor(tensor_buf, f"{where}.loss_fn_inputs.{name}")
        else:
            rest.append(raw)
    mspans = lspans = None
    if rest:
        extra = _parse(pb.Datum(), b"".join(rest), where)
        mspans = _spans_from_pb(extra.model_input_spans)
        lspans = _spans_from_pb(extra.loss_fn_input_spans)
    try:
        return Datum(
            model_input=ModelInput(chunks=chunks),
            loss_fn_inputs=inputs,
            model_input_spans=mspans,
            loss_fn_input_spans=lspans,
        )
    except ValueError as exc:
        raise WireFormatError(str(exc), field=where) from None


def decode_forward_backward_request(data: bytes) -> ForwardBackwardRequest | ForwardRequest:
    """Parse a ``ForwardBackwardRequest``; ``forward_only`` gives a :class:`ForwardRequest`.

    Tensors and tokens are read without copying (``np.frombuffer`` over ``data``), so the
    returned request keeps ``data`` alive.
    """
    view = memoryview(data)
    head_parts: list[memoryview] = []
    datum_views: list[memoryview] = []
    for number, wire, value, raw in fields(view, "ForwardBackwardRequest"):
        if number == 3 and wire == 2:
            datum_views.append(value)
        else:
            head_parts.append(raw)
    msg = _parse(pb.ForwardBackwardRequest(), b"".join(head_parts), "ForwardBackwardRequest")
    config: dict[str, float | str] = {k: float(v) for k, v in msg.loss_fn_config.items()}
    for cfg_key, value in msg.loss_fn_config_v2.items():  # v2 wins over the legacy mirror
        kind = value.WhichOneof("value")
        if kind == "text":
            config[cfg_key] = value.text
        elif kind == "number":
            config[cfg_key] = value.number
    datums = [_read_datum(v, i) for i, v in enumerate(datum_views)]
    fb_input = ForwardBackwardInput(
        data=datums,
        loss_fn=msg.loss_fn,
        loss_fn_config=config or None,
    )
    if msg.forward_only:
        return ForwardRequest(forward_input=fb_input, model_id=msg.model_id, seq_id=msg.seq_id)
    return ForwardBackwardRequest(
        forward_backward_input=fb_input, model_id=msg.model_id, seq_id=msg.seq_id
    )


# -- forward/backward output ------------------------------------------------------------------
def _record_key(outputs: dict[str, TensorData]) -> tuple[Any, ...]:
    return tuple(
        (name, td.dtype, tuple(td.dense_shape[1:])) for name, td in sorted(outputs.items())
    )


def encode_forward_backward_output(output: ForwardBackwardOutput) -> bytes:
    """Serialize per-datum outputs as ``ArrayRecord``s of ``BatchedTensor``s.

    Consecutive datums whose fields share dtype and trailing shape go into one record; a change
    (e.g. ragged ``K`` of 2-D targets) starts a new record, as the service does.
    """
    head = pb.ForwardBackwardOutput()
    head.loss_fn_output_type = output.loss_fn_output_type
    for name, value in output.metrics.items():
        head.metrics[name] = float(value)
    out = Writer()
    out.raw(head.SerializeToString())
    groups: list[list[dict[str, TensorData]]] = []
    last_key: tuple[Any, ...] | None = None
    for outputs in output.loss_fn_outputs:
        group_key = _record_key(outputs)
        if group_key != last_key or not groups:
            groups.append([])
            last_key = group_key
        groups[-1].append(outputs)
    for group in groups:
        record = Writer()
        record.string_field(1, output.loss_fn_output_type)
        for name in group[0]:
            first = group[0][name]
            if first.is_sparse:
                raise WireFormatError("outputs must be dense", field=f"loss_fn_outputs.{name}")
            np_dtype = np.dtype("<f4") if first.dtype == "float32" else np.dtype("<i8")
            arrays = [np.ascontiguousarray(o[name].data, dtype=np_dtype).reshape(-1) for o in group]
            sizes = np.fromiter((a.size for a in arrays), dtype=np.int64, count=len(arrays))
            offsets = np.zeros(len(arrays) + 1, dtype="<i8")
            np.cumsum(sizes * np_dtype.itemsize, out=offsets[1:])
            batched = Writer()
            if arrays:
                batched.array_field(1, np.concatenate(arrays), np_dtype.str)
            batched.array_field(2, offsets, "<i8")
            batched.varint_field(3, _DTYPE_TO_PB[first.dtype])
            batched.packed_varints(4, list(first.dense_shape[1:]))
            entry = Writer()
            entry.string_field(1, name)
            entry.message_field(2, batched)
            record.message_field(2, entry)
        record.varint_field(3, len(group))
        out.message_field(2, record)
    return out.getvalue()


def _read_batched(buf: memoryview, field: str) -> list[TensorData]:
    data: memoryview = memoryview(b"")
    offsets_buf: memoryview = memoryview(b"")
    pb_dtype = 0
    trailing: list[int] = []
    for number, wire, value, _ in fields(buf, field):
        if number == 1 and wire == 2:
            data = value
        elif number == 2 and wire == 2:
            offsets_buf = value
        elif number == 3 and wire == 0:
            pb_dtype = int(value)
        elif number == 4 and wire == 2:
            trailing.extend(packed_varints(value, f"{field}.trailing_shape"))
        elif number == 4 and wire == 0:
            trailing.append(int(value))
    np_dtype, dtype = _buffer_dtype(pb_dtype, f"{field}.dtype")
    buf_arr = _widen(_frombuffer(data, np_dtype, field), pb_dtype)
    offsets = _frombuffer(offsets_buf, np.dtype("<i8"), f"{field}.offsets")
    item = np_dtype.itemsize
    if (
        offsets.size == 0
        or offsets[0] != 0
        or offsets[-1] != len(data)
        or np.any(np.diff(offsets) < 0)
        or np.any(offsets % item)
    ):
        raise TensorError(
            f"offsets must rise from 0 to {len(data)} in steps of {item} bytes",
            field=f"{field}.offsets",
        )
    if any(d < 0 for d in trailing):
        raise TensorError(f"negative trailing shape {trailing}", field=f"{field}.trailing_shape")
    inner = math.prod(trailing)
    starts = (offsets // item).tolist()
    tensors = []
    for i in range(len(starts) - 1):
        flat = buf_arr[starts[i]:starts[i + 1]]
        if inner == 0 or flat.size % inner:
            raise TensorError(
                f"datum {i} has {flat.size} values, not a multiple of trailing shape {trailing}",
                field=field,
            )
        tensors.append(
            TensorData(data=flat, dtype=dtype, shape=[flat.size // inner, *trailing])
        )
    return tensors


def decode_forward_backward_output(data: bytes) -> ForwardBackwardOutput:
    """Parse a ``ForwardBackwardOutput`` into per-datum ``TensorData`` dicts (zero-copy)."""
    view = memoryview(data)
    head_parts: list[memoryview] = []
    records: list[memoryview] = []
    for number, wire, value, raw in fields(view, "ForwardBackwardOutput"):
        if number == 2 and wire == 2:
            records.append(value)
        else:
            head_parts.append(raw)
    msg = _parse(pb.ForwardBackwardOutput(), b"".join(head_parts), "ForwardBackwardOutput")
    metrics = {k: float(v) for k, v in msg.metrics.items()}
    if not records:
        return ForwardBackwardOutput(
            loss_fn_output_type=msg.loss_fn_output_type or "ArrayRecord",
            loss_fn_outputs=[],
            metrics=metrics,
        )
    outputs: list[dict[str, TensorData]] = []
    for r, record in enumerate(records):
        where = f"loss_fn_outputs[{r}]"
        per_field: dict[str, list[TensorData]] = {}
        num_datums = 0
        for number, wire, value, _ in fields(record, where):
            if number == 2 and wire == 2:
                name = ""
                bt: memoryview = memoryview(b"")
                for n, w, v, _ in fields(value, f"{where}.fields"):
                    if n == 1 and w == 2:
                        name = _utf8(v, f"{where}.fields")
                    elif n == 2 and w == 2:
                        bt = v
                per_field[name] = _read_batched(bt, f"{where}.{name}")
            elif number == 3 and wire == 0:
                num_datums = int(value)
        count = num_datums or (len(next(iter(per_field.values()))) if per_field else 0)
        for name, tensors in per_field.items():
            if len(tensors) != count:
                raise TensorError(
                    f"{len(tensors)} datums in field, record says {count}", field=f"{where}.{name}"
                )
        outputs.extend({name: per_field[name][i] for name in per_field} for i in range(count))
    return ForwardBackwardOutput(
        loss_fn_output_type=msg.loss_fn_output_type.rsplit(":", 1)[-1],
        loss_fn_outputs=outputs,
        metrics=metrics,
    )


# -- sample response --------------------------------------------------------------------------
def _topk_to_pb(topk: TopkLogprobs, msg: Any) -> None:
    msg.token_ids = np.ascontiguousarray(topk.token_ids, dtype="<i4").tobytes()
    msg.logprobs = np.ascontiguousarray(topk.logprobs, dtype="<f4").tobytes()
    msg.k = topk.k
    msg.length = topk.length


def _topk_from_pb(msg: Any, field: str) -> TopkLogprobs | None:
    if msg.k == 0 or msg.length == 0:
        return None
    ids = _frombuffer(msg.token_ids, np.dtype("<i4"), f"{field}.token_ids")
    lps = _frombuffer(msg.logprobs, np.dtype("<f4"), f"{field}.logprobs")
    try:
        return TopkLogprobs(token_ids=ids, logprobs=lps, k=msg.k, length=msg.length)
    except WireFormatError as exc:
        raise TensorError(str(exc), field=field) from None


def encode_sample_response(response: SampleResponse) -> bytes:
    """Serialize a ``SampleResponse`` (int32 tokens, float32 logprobs)."""
    msg = pb.SampleResponse()
    for seq in response.sequences:
        smsg = msg.sequences.add()
        smsg.stop_reason = _STOP_TO_PB[seq.stop_reason]
        smsg.tokens = np.ascontiguousarray(seq.tokens_np, dtype="<i4").tobytes()
        if seq.logprobs_np is not None:
            smsg.logprobs = np.ascontiguousarray(seq.logprobs_np, dtype="<f4").tobytes()
        if seq.topk_logprobs_np is not None:
            _topk_to_pb(seq.topk_logprobs_np, smsg.topk_sampled_logprobs)
    if response.prompt_logprobs_np is not None:
        msg.prompt_logprobs = np.ascontiguousarray(response.prompt_logprobs_np, dtype="<f4").tobytes()
    if response.topk_prompt_logprobs_np is not None:
        _topk_to_pb(response.topk_prompt_logprobs_np, msg.topk_prompt_logprobs)
    msg.prompt_cache_hit_tokens = response.prompt_cache_hit_tokens
    if response.target_prompt_logprobs is not None:
        _tensor_to_pb(response.target_prompt_logprobs, msg.target_prompt_logprobs)
    if response.prompt_alt_tokens is not None:
        _tensor_to_pb(response.prompt_alt_tokens.tokens, msg.prompt_alt_tokens.tokens)
        _tensor_to_pb(response.prompt_alt_tokens.logprobs, msg.prompt_alt_tokens.logprobs)
    return bytes(msg.SerializeToString())


def decode_sample_response(
    data: bytes, sequence_ids: Sequence[str] | None = None
) -> SampleResponse:
    """Parse a ``SampleResponse``; ``sequence_ids`` (from the submission) are stamped in order."""
    msg = _parse(pb.SampleResponse(), data, "SampleResponse")
    if sequence_ids is not None and len(sequence_ids) != len(msg.sequences):
        raise DecodeError(
            f"{len(msg.sequences)} sequences but {len(sequence_ids)} sample_sequence_ids",
            field="sequences",
        )
    sequences = []
    for i, smsg in enumerate(msg.sequences):
        field = f"sequences[{i}]"
        stop = _PB_TO_STOP.get(smsg.stop_reason)
        if stop is None:
            raise DecodeError(f"unknown stop_reason {smsg.stop_reason}", field=f"{field}.stop_reason")
        tokens = _frombuffer(smsg.tokens, np.dtype("<i4"), f"{field}.tokens")
        logprobs = (
            _frombuffer(smsg.logprobs, np.dtype("<f4"), f"{field}.logprobs")
            if smsg.HasField("logprobs")
            else None
        )
        topk = (
            _topk_from_pb(smsg.topk_sampled_logprobs, f"{field}.topk_sampled_logprobs")
            if smsg.HasField("topk_sampled_logprobs")
            else None
        )
        try:
            sequences.append(
                SampledSequence(
                    stop_reason=stop,  # type: ignore[arg-type]
                    tokens_np=tokens,
                    logprobs_np=logprobs,
                    sequence_id=sequence_ids[i] if sequence_ids is not None else None,
                    topk_logprobs_np=topk,
                )
            )
        except WireFormatError as exc:
            raise DecodeError(str(exc), field=field) from None
    alt = None
    if msg.HasField("prompt_alt_tokens"):
        alt = PromptAltTokens(
            tokens=_tensor_from_pb(msg.prompt_alt_tokens.tokens, "prompt_alt_tokens.tokens"),
            logprobs=_tensor_from_pb(msg.prompt_alt_tokens.logprobs, "prompt_alt_tokens.logprobs"),
        )
    return SampleResponse(
        sequences=sequences,
        prompt_logprobs_np=(
            _frombuffer(msg.prompt_logprobs, np.dtype("<f4"), "prompt_logprobs")
            if msg.HasField("prompt_logprobs")
            else None
        ),
        topk_prompt_logprobs_np=(
            _topk_from_pb(msg.topk_prompt_logprobs, "topk_prompt_logprobs")
            if msg.HasField("topk_prompt_logprobs")
            else None
        ),
        target_prompt_logprobs=(
            _tensor_from_pb(msg.target_prompt_logprobs, "target_prompt_logprobs")
            if msg.HasField("target_prompt_logprobs")
            else None
        ),
        prompt_cache_hit_tokens=msg.prompt_cache_hit_tokens,
        prompt_alt_tokens=alt,
    )
