"""JSON codec: msgspec Structs ⇄ bytes, as the official SDK writes and reads them.

* Encoding omits ``None`` fields (the SDK's ``exclude_none``) but keeps fields equal to their
  defaults; a type may list fields that are sent even when ``None`` in ``__wire_keep_none__``.
* NumPy arrays inside wire types travel as JSON lists; ``bytes`` as base64; datetimes as ISO 8601.
* JSON has no NaN or infinity (msgspec and Python's ``json`` would write ``null``, which a reader
  cannot tell from a missing value): encoding a non-finite number raises
  :class:`~tinkjax.errors.WireFormatError` naming the field, except in the fields a type lists
  in ``__wire_nan_as_null__``, where NaN means "not computed" and travels as ``null`` on purpose
  (``SampleResponse.prompt_logprobs``).
* Decoders are built once per type and cached; every decode error becomes
  :class:`tinkjax.errors.DecodeError` naming the JSON path of the bad field.
"""

from __future__ import annotations

import base64
import datetime as _dt
import enum
import math
from functools import cache
from typing import Any, TypeVar

import msgspec
import numpy as np

from tinkjax.errors import DecodeError, WireFormatError
from tinkjax.types import TensorData

__all__ = ["decode_json", "encode_json", "to_wire_builtins"]

T = TypeVar("T")

_encoder = msgspec.json.Encoder()


def _struct_to_builtins(obj: msgspec.Struct) -> dict[str, Any]:
    cls = type(obj)
    config = obj.__struct_config__
    keep_none: tuple[str, ...] = getattr(cls, "__wire_keep_none__", ())
    nan_as_null: tuple[str, ...] = getattr(cls, "__wire_nan_as_null__", ())
    out: dict[str, Any] = {}
    if config.tag_field is not None:
        out[config.tag_field] = config.tag
    for attr, wire_name in zip(cls.__struct_fields__, cls.__struct_encode_fields__, strict=True):
        value = getattr(obj, attr)
        if value is None and attr not in keep_none:
            continue
        try:
            if attr in nan_as_null and isinstance(value, np.ndarray):
                _check_finite(np.where(np.isnan(value), 0.0, value))
                out[wire_name] = [None if x != x else x for x in value.tolist()]
            else:
                out[wire_name] = to_wire_builtins(value)
        except WireFormatError as exc:
            inner = exc.field
            raise WireFormatError(
                str(exc).removeprefix(f"{inner}: ") if inner else str(exc),
                field=f"{wire_name}.{inner}" if inner else wire_name,
            ) from None
    if cls is TensorData:  # ``data`` is the flattened tensor on the wire; ``shape`` restores it
        _check_finite(obj.data)  # type: ignore[attr-defined]
        out["data"] = obj.data.reshape(-1).tolist()  # type: ignore[attr-defined]
    return out


def _check_finite(values: np.ndarray) -> None:
    if values.dtype.kind in "fc" and not np.isfinite(values).all():
        bad = values.reshape(-1)[~np.isfinite(values.reshape(-1))][0]
        raise WireFormatError(f"cannot encode the non-finite number {bad} as JSON")


def to_wire_builtins(value: Any) -> Any:
    """Convert a wire value to JSON-ready builtins (``None`` struct fields dropped)."""
    if isinstance(value, msgspec.Struct):
        return _struct_to_builtins(value)
    if isinstance(value, np.ndarray):
        _check_finite(value)
        return value.tolist()
    if isinstance(value, str | int | float | bool) or value is None:
        if isinstance(value, enum.Enum):
            return value.value
        if isinstance(value, float) and not math.isfinite(value):
            raise WireFormatError(f"cannot encode the non-finite number {value} as JSON")
        return value
    if isinstance(value, list | tuple):
        if (
            value
            and isinstance(value[0], str | int | float)
            and not isinstance(value[0], enum.Enum)
        ):
            for v in value:
                if isinstance(v, float) and not math.isfinite(v):
                    raise WireFormatError(f"cannot encode the non-finite number {v} as JSON")
            return list(value)
        return [to_wire_builtins(v) for v in value]
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            try:
                out[str(k)] = to_wire_builtins(v)
            except WireFormatError as exc:
                inner = exc.field
                raise WireFormatError(
                    str(exc).removeprefix(f"{inner}: ") if inner else str(exc),
                    field=f"{k}.{inner}" if inner else str(k),
                ) from None
        return out
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, _dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=_dt.UTC)
        text = value.isoformat()
        # UTC as ``Z``, as pydantic (the official SDK) writes it.
        return text[:-6] + "Z" if text.endswith("+00:00") else text
    if isinstance(value, np.generic):
        return to_wire_builtins(value.item())
    if isinstance(value, enum.Enum):
        return value.value
    raise WireFormatError(f"cannot encode a value of type {type(value).__name__} as JSON")


def encode_json(obj: Any) -> bytes:
    """Encode a wire object (or builtins) to JSON bytes, omitting ``None`` fields."""
    return _encoder.encode(to_wire_builtins(obj))


@cache
def _decoder(tp: Any) -> msgspec.json.Decoder[Any]:
    return msgspec.json.Decoder(tp)


def decode_json(data: bytes | str, tp: type[T]) -> T:
    """Decode JSON ``data`` into ``tp``.

    Raises:
        DecodeError: the bytes are not JSON, or do not match ``tp``; the message names the
            JSON path (``$.data[3].loss_fn_inputs``) and what was wrong.
    """
    try:
        return _decoder(tp).decode(data)  # type: ignore[arg-type, no-any-return]
    except msgspec.ValidationError as exc:
        field = _path_of(str(exc))
        cause = exc.__cause__
        if isinstance(cause, WireFormatError):  # raised by a type's __post_init__ check
            inner = cause.field
            field = f"{field or '$'}.{inner}" if inner else field
        message = str(exc)
        if message.startswith(_NULL_FLOAT):
            # JSON has no NaN or infinity: Python's json (the official SDK) writes them as null.
            message = (
                f"{field}: expected a finite number, got null (a NaN or infinity, which JSON "
                "encoders write as null, or a missing value)"
            )
        raise DecodeError(
            f"invalid {getattr(tp, '__name__', tp)}: {message}", field=field
        ) from None
    except msgspec.DecodeError as exc:
        raise DecodeError(f"malformed JSON: {exc}") from None
    except WireFormatError as exc:  # raised from a __post_init__ check
        raise DecodeError(str(exc), field=exc.field) from None


_NULL_FLOAT = "Expected `float`, got `null`"


def _path_of(message: str) -> str | None:
    marker = " - at `"
    if marker in message:
        return message.rsplit(marker, 1)[1].rstrip("`")
    return None
