"""Protobuf codec of ``ForwardBackwardOutput``: per-datum outputs as batched ``ArrayRecord``s."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from tinkjax.errors import TensorError, WireFormatError
from tinkjax.types import ForwardBackwardOutput, TensorData

from ._pb import tinkjax_wire_pb2 as pb
from ._pbreader import fields, packed_varints
from ._pbwriter import Writer
from ._proto_common import DTYPE_TO_PB, buffer_dtype, checked_frombuffer, split_bulk, utf8, widen

__all__ = ["decode_forward_backward_output", "encode_forward_backward_output"]


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
            batched.varint_field(3, DTYPE_TO_PB[first.dtype])
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
    np_dtype, dtype = buffer_dtype(pb_dtype, f"{field}.dtype")
    buf_arr = widen(checked_frombuffer(data, np_dtype, field), pb_dtype)
    offsets = checked_frombuffer(offsets_buf, np.dtype("<i8"), f"{field}.offsets")
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
        flat = buf_arr[starts[i] : starts[i + 1]]
        if inner == 0 or flat.size % inner:
            raise TensorError(
                f"datum {i} has {flat.size} values, not a multiple of trailing shape {trailing}",
                field=field,
            )
        tensors.append(TensorData(data=flat, dtype=dtype, shape=[flat.size // inner, *trailing]))
    return tensors


def decode_forward_backward_output(data: bytes) -> ForwardBackwardOutput:
    """Parse a ``ForwardBackwardOutput`` into per-datum ``TensorData`` dicts (zero-copy)."""
    msg, records = split_bulk(data, pb.ForwardBackwardOutput(), 2, "ForwardBackwardOutput")
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
                        name = utf8(v, f"{where}.fields")
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
