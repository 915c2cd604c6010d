"""A zero-copy protobuf reader for the large messages (``ForwardBackwardRequest``/``Output``).

Parsing with upb and then reading ``bytes`` fields copies every buffer twice; this reader walks
the wire format over a ``memoryview`` and hands out slices, which ``np.frombuffer`` wraps
without copying. Only the bulky fields are read here; the rest of a message (configs, images,
provenance spans) is collected as raw field bytes and parsed by the generated module, since a
protobuf message parses from any concatenation of its fields.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from tinkjax.errors import DecodeError

__all__ = ["Field", "fields", "only_bytes_field", "packed_varints"]

Field = tuple[int, int, Any, memoryview]
"""``(field_number, wire_type, value, raw)``: ``value`` is an int for varint/fixed fields and a
slice for length-delimited ones; ``raw`` is the whole field (key included) as it appeared."""


def read_varint(buf: memoryview, pos: int, end: int, what: str) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= end:
            raise DecodeError(f"malformed protobuf {what}: truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise DecodeError(f"malformed protobuf {what}: varint longer than 10 bytes")


def fields(buf: memoryview, what: str) -> Iterator[Field]:
    """Iterate over the fields of one serialized message.

    Raises:
        DecodeError: on truncation, an invalid wire type, or field number 0.
    """
    pos = 0
    end = len(buf)
    while pos < end:
        start = pos
        tag = buf[pos]
        if tag < 0x80:  # one-byte keys (fields 1-15) are the rule: skip the varint loop
            pos += 1
        else:
            tag, pos = read_varint(buf, pos, end, what)
        number, wire = tag >> 3, tag & 7
        if number == 0:
            raise DecodeError(f"malformed protobuf {what}: field number 0")
        value: int | memoryview
        if wire == 2:
            if pos < end and buf[pos] < 0x80:
                size = buf[pos]
                pos += 1
            else:
                size, pos = read_varint(buf, pos, end, what)
            if pos + size > end:
                raise DecodeError(f"malformed protobuf {what}: field {number} overruns the message")
            value = buf[pos : pos + size]
            pos += size
        elif wire == 0:
            value, pos = read_varint(buf, pos, end, what)
        elif wire == 1:
            if pos + 8 > end:
                raise DecodeError(f"malformed protobuf {what}: truncated fixed64")
            value = int.from_bytes(buf[pos : pos + 8], "little")
            pos += 8
        elif wire == 5:
            if pos + 4 > end:
                raise DecodeError(f"malformed protobuf {what}: truncated fixed32")
            value = int.from_bytes(buf[pos : pos + 4], "little")
            pos += 4
        else:
            raise DecodeError(f"malformed protobuf {what}: unsupported wire type {wire}")
        yield number, wire, value, buf[start:pos]


def only_bytes_field(buf: memoryview, number: int, what: str) -> memoryview | None:
    """The payload of ``buf`` when it is exactly one length-delimited field ``number``.

    The fast path for wrapper messages (``Chunk{encoded_text}``, ``EncodedTextChunk{tokens}``);
    ``None`` when ``buf`` holds anything else, so the caller falls back to :func:`fields`.
    """
    end = len(buf)
    if end < 2 or buf[0] != (number << 3) | 2:
        return None
    size = buf[1]
    pos = 2
    if size >= 0x80:
        try:
            size, pos = read_varint(buf, 1, end, what)
        except DecodeError:  # the general path reports it
            return None
    if pos + size != end:
        return None
    return buf[pos:end]


def packed_varints(buf: memoryview, what: str) -> list[int]:
    """Decode a packed repeated varint field (signed 64-bit)."""
    out = []
    pos, end = 0, len(buf)
    while pos < end:
        value, pos = read_varint(buf, pos, end, what)
        if value >= 1 << 63:
            value -= 1 << 64
        out.append(value)
    return out
