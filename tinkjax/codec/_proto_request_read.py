"""Zero-copy protobuf decoder of ``ForwardBackwardRequest`` (see ``_pbreader``).

Datums are read over a ``memoryview`` of the body; the layouts writers emit are recognised
directly, anything else goes through the general field loop, which reports errors with their
path.
"""

from __future__ import annotations

import numpy as np

from tinkjax.errors import DecodeError, TensorError, WireFormatError
from tinkjax.types import (
    Datum,
    EncodedTextChunk,
    ForwardBackwardInput,
    ForwardBackwardRequest,
    ForwardRequest,
    ModelInput,
    ModelInputChunk,
    TensorData,
)

from ._pb import tinkjax_wire_pb2 as pb
from ._pbreader import fields, only_bytes_field, packed_varints
from ._pbreader import read_varint as _pb_varint
from ._proto_common import (
    buffer_dtype,
    checked_frombuffer,
    chunk_from_pb,
    parse_message,
    spans_from_pb,
    split_bulk,
    utf8,
    widen,
)

__all__ = ["decode_forward_backward_request"]

_I4 = np.dtype("<i4")


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
        np_dtype, dtype = buffer_dtype(pb_type, f"{field}.dtype")
        try:
            values = widen(checked_frombuffer(dense_buf, np_dtype, field), pb_type)
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
    np_dtype, dtype = buffer_dtype(pb_dtype, f"{field}.dtype")
    try:
        if csr is not None:
            parts: dict[int, memoryview] = {}
            for number, wire, value, _ in fields(csr, f"{field}.sparse_csr"):
                if wire == 2 and number in (1, 2, 3):
                    parts[number] = value
            empty = memoryview(b"")
            values = widen(
                checked_frombuffer(parts.get(1, empty), np_dtype, f"{field}.values"), pb_dtype
            )
            return TensorData(
                data=values,
                dtype=dtype,
                shape=shape,
                sparse_crow_indices=checked_frombuffer(
                    parts.get(2, empty), np.dtype("<i8"), f"{field}.crow_indices"
                ).tolist(),
                sparse_col_indices=checked_frombuffer(
                    parts.get(3, empty), np.dtype("<i8"), f"{field}.col_indices"
                ).tolist(),
            )
        values = widen(
            checked_frombuffer(dense if dense is not None else memoryview(b""), np_dtype, field),
            pb_dtype,
        )
        return TensorData(data=values, dtype=dtype, shape=shape or None)
    except WireFormatError as exc:
        raise _within(exc, field) from None


def _read_chunk(buf: memoryview, field: str) -> ModelInputChunk:
    text = only_bytes_field(buf, 1, field)
    if text is not None:  # the hot path: Chunk{encoded_text{tokens}}
        tokens = only_bytes_field(text, 1, field) if len(text) else memoryview(b"")
        if tokens is not None:
            # int32 → a new int64 array, which the chunk keeps without another copy
            return EncodedTextChunk(tokens=checked_frombuffer(tokens, _I4, f"{field}.tokens"))
    text = None
    other = False
    for number, wire, value, _ in fields(buf, field):
        if number == 1 and wire == 2:
            text, other = value, False
        elif number in (2, 3):
            text, other = None, True
    if other or text is None:
        return chunk_from_pb(parse_message(pb.Chunk(), bytes(buf), field), field)
    tokens_buf: memoryview = memoryview(b"")
    for number, wire, value, _ in fields(text, f"{field}.encoded_text"):
        if number == 1 and wire == 2:
            tokens_buf = value
    return EncodedTextChunk(tokens=checked_frombuffer(tokens_buf, _I4, f"{field}.tokens"))


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
                name = utf8(entry[0], f"{where}.loss_fn_inputs")
                tensor_buf = entry[1]
            else:
                for n, w, v, _ in fields(value, f"{where}.loss_fn_inputs"):
                    if n == 1 and w == 2:
                        name = utf8(v, f"{where}.loss_fn_inputs")
                    elif n == 2 and w == 2:
                        tensor_buf = v
            inputs[name] = _read_tensor(tensor_buf, f"{where}.loss_fn_inputs.{name}")
        else:
            rest.append(raw)
    mspans = lspans = None
    if rest:
        extra = parse_message(pb.Datum(), b"".join(rest), where)
        mspans = spans_from_pb(extra.model_input_spans)
        lspans = spans_from_pb(extra.loss_fn_input_spans)
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
    msg, datum_views = split_bulk(data, pb.ForwardBackwardRequest(), 3, "ForwardBackwardRequest")
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
