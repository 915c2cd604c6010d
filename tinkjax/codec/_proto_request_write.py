"""Protobuf encoder of ``ForwardBackwardRequest`` (forward/backward and forward-only requests).

The datums (the bulk) are written directly over raw little-endian buffers; only small parts go
through the generated module (see ``_pbwriter``).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
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
from ._pbwriter import Writer, varint
from ._pbwriter import varint_size as _vlen
from ._proto_common import DTYPE_TO_PB, INT32_MAX, INT32_MIN, chunk_to_pb, spans_to_pb

__all__ = [
    "WeightedChunk",
    "encode_datum_prefixes",
    "encode_forward_backward_request",
    "encode_weighted_request",
]

_NP_OF: dict[str, np.dtype[Any]] = {"float32": np.dtype("<f4"), "int64": np.dtype("<i8")}
# Field 3 (dtype) of a ``Tensor``, per wire dtype.
_DTYPE_TAILS = {name: bytes((0x18, value)) for name, value in DTYPE_TO_PB.items()}


# -- forward/backward request -----------------------------------------------------------------
def _tensor_tail(dtype: str, shape: list[int] | None) -> bytes:
    """Fields 3 (dtype) and 4 (packed shape) of a ``Tensor``."""
    tail = _DTYPE_TAILS[dtype]
    if shape:
        packed = varint(shape[0]) if len(shape) == 1 else b"".join([varint(d) for d in shape])
        tail += b"\x22" + varint(len(packed)) + packed
    return tail


def _dense_entry_head(name_field: bytes, nbytes: int, tail_len: int) -> bytes:
    """Everything of a ``loss_fn_inputs`` map entry (``{1: name, 2: Tensor}``) that precedes
    the ``nbytes`` of a dense tensor's buffer (``Tensor {1: data}``), ``tail_len`` bytes of
    dtype and shape fields following it."""
    tensor_len = 1 + _vlen(nbytes) + nbytes + tail_len
    entry_len = len(name_field) + 1 + _vlen(tensor_len) + tensor_len
    return (
        b"\x12"
        + varint(entry_len)
        + name_field
        + b"\x12"
        + varint(tensor_len)
        + b"\x0a"
        + varint(nbytes)
    )


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


def _datum_parts(
    datum: Datum,
    index: int,
    parts: list[Any],
    keys: Collection[str] | None = None,
    check_tokens: bool = True,
    with_spans: bool = True,
) -> int:
    """Append the serialized fields of ``datum`` to ``parts``; return their total length.

    ``parts`` receives ``bytes`` and C-contiguous NumPy arrays (``bytes.join`` takes any
    buffer). ``keys``, when given, limits the ``loss_fn_inputs`` written to those names.
    ``check_tokens=False`` skips the int32 range check of token ids (the caller did it);
    ``with_spans=False`` leaves out the provenance spans (written last otherwise).

    The hot path (text chunks, dense tensors) writes each field as one header (keys and varint
    lengths of the nested messages, computed up front) followed by the raw little-endian
    buffer, so a datum costs a few Python operations whatever its size.
    """
    length = 0
    for j, chunk in enumerate(datum.model_input.chunks):
        if isinstance(chunk, EncodedTextChunk):
            toks = chunk.tokens
            if check_tokens and toks.size and (toks.max() > INT32_MAX or toks.min() < INT32_MIN):
                raise TensorError(
                    "token id does not fit in int32",
                    field=f"data[{index}].model_input[{j}].tokens",
                )
            if toks.size:
                data = toks.astype("<i4")
                n = data.nbytes
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
            chunk_to_pb(chunk, cmsg, f"data[{index}].model_input[{j}]")
            body = cmsg.SerializeToString()
            head = b"\x0a" + varint(len(body))
            parts.append(head)
            parts.append(body)
            length += len(head) + len(body)
    for name, td in datum.loss_fn_inputs.items():
        if keys is not None and name not in keys:
            continue
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
        n = arr.nbytes
        tail = _tensor_tail(td.dtype, td.shape)
        head = _dense_entry_head(name_field, n, len(tail))
        parts.append(head)
        parts.append(arr)
        parts.append(tail)
        length += len(head) + n + len(tail)
    if with_spans:
        body = _spans_bytes(datum)
        if body:
            parts.append(body)
            length += len(body)
    return length


def _spans_bytes(datum: Datum) -> bytes:
    """The datum's provenance span fields, serialized (empty without provenance)."""
    if datum.model_input_spans is None and datum.loss_fn_input_spans is None:
        return b""
    spans = pb.Datum()
    spans_to_pb(datum.model_input_spans or (), spans.model_input_spans)
    spans_to_pb(datum.loss_fn_input_spans or (), spans.loss_fn_input_spans)
    return spans.SerializeToString()


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
    parts: list[Any] = [head.SerializeToString()]
    for i, datum in enumerate(fb_input.data):
        slot = len(parts)
        parts.append(b"")
        size = _datum_parts(datum, i, parts)
        parts[slot] = b"\x1a" + varint(size)
    return b"".join(parts)


# -- pre-encoded datums with separate weights (forward_backward_custom) ---------------------------
_WEIGHTS_NAME_FIELD = b"\x0a\x07weights"
_weight_frames: dict[int, tuple[bytes, bytes]] = {}


def _weights_frame(n: int) -> tuple[bytes, bytes]:
    """Header and tail of the ``weights`` map entry of an ``[n]`` float32 tensor (cached by n)."""
    frame = _weight_frames.get(n)
    if frame is None:
        tail = _tensor_tail("float32", [n])
        head = _dense_entry_head(_WEIGHTS_NAME_FIELD, 4 * n, len(tail))
        frame = _weight_frames.setdefault(n, (head, tail))
    return frame


def encode_datum_prefixes(data: Sequence[Datum]) -> list[tuple[bytes, bytes]]:
    """What the two passes of ``forward_backward_custom`` share of each datum: its serialized
    fields except ``loss_fn_inputs['weights']`` (and any key other than ``target_tokens``), as
    ``(before, after)``: the fields the full encoder writes before the weights, and after them
    (the provenance spans, usually empty).

    Token ids are range-checked over the whole batch at once (one pass instead of two
    reductions per datum); an out-of-range id is reported with its datum's field path.
    """
    tokens = [
        chunk.tokens
        for datum in data
        for chunk in datum.model_input.chunks
        if isinstance(chunk, EncodedTextChunk)
    ]
    flat = np.concatenate(tokens) if len(tokens) > 1 else (tokens[0] if tokens else None)
    in_range = (
        flat is None or not flat.size or (flat.max() <= INT32_MAX and flat.min() >= INT32_MIN)
    )
    out = []
    for index, datum in enumerate(data):
        parts: list[Any] = []
        _datum_parts(
            datum,
            index,
            parts,
            keys=("target_tokens",),
            check_tokens=not in_range,
            with_spans=False,
        )
        out.append((b"".join(parts), _spans_bytes(datum)))
    return out


class WeightedChunk:
    """Datums pre-encoded by :func:`encode_datum_prefixes`, with the ``[n]`` float32 weights to
    send with each of them: ``weights`` is every datum's weights back to back (``lengths[i]``
    values for datum ``i``)."""

    __slots__ = ("lengths", "prefixes", "weights")

    def __init__(
        self,
        prefixes: Sequence[tuple[bytes, bytes]],
        lengths: Sequence[int],
        weights: np.ndarray[Any, Any],
    ) -> None:
        if len(prefixes) != len(lengths):
            raise ValueError(f"{len(prefixes)} prefixes but {len(lengths)} lengths")
        total = sum(lengths)
        if weights.shape != (total,):
            raise ValueError(f"weights must have shape ({total},), got {weights.shape}")
        self.prefixes = prefixes
        self.lengths = lengths
        self.weights = np.ascontiguousarray(weights, dtype="<f4")

    def __len__(self) -> int:
        return len(self.prefixes)


def encode_weighted_request(
    chunk: WeightedChunk, *, model_id: str, seq_id: int, loss_fn: str, forward_only: bool
) -> bytes:
    """A ``ForwardBackwardRequest`` of pre-encoded datums, each completed with its weights
    (no config: the custom-loss passes use ``cross_entropy`` without one)."""
    head = pb.ForwardBackwardRequest()
    head.model_id = model_id
    head.seq_id = seq_id
    head.forward_only = forward_only
    head.loss_fn = loss_fn
    parts: list[Any] = [head.SerializeToString()]
    weights = chunk.weights
    pos = 0
    for (before, after), n in zip(chunk.prefixes, chunk.lengths, strict=True):
        entry_head, tail = _weights_frame(n)
        size = len(before) + len(entry_head) + 4 * n + len(tail) + len(after)
        parts += (b"\x1a" + varint(size), before, entry_head, weights[pos : pos + n], tail)
        if after:
            parts.append(after)
        pos += n
    return b"".join(parts)
