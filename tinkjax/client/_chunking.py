"""Splitting a forward/backward batch into requests, and combining their results (§9, §5)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TypeVar

import numpy as np

from tinkjax.types import (
    Datum,
    DmelChunk,
    EncodedTextChunk,
    ForwardBackwardOutput,
    ImageAssetPointerChunk,
    ImageChunk,
    TensorData,
)

__all__ = [
    "MAX_CHUNK_BYTES",
    "MAX_CHUNK_LEN",
    "chunk_counts",
    "chunk_data",
    "combine_outputs",
    "estimate_datum_bytes",
    "split_by_counts",
]

logger = logging.getLogger("tinkjax.client")

T = TypeVar("T")

MAX_CHUNK_LEN = 1024
MAX_CHUNK_BYTES = 5_000_000


def _tensor_bytes(td: TensorData) -> int:
    if td.sparse_crow_indices is not None:
        return int(np.asarray(td.data).nbytes) + 8 * (
            len(td.sparse_crow_indices) + len(td.sparse_col_indices or ())
        )
    return int(np.asarray(td.data).nbytes)


def estimate_datum_bytes(datum: Datum) -> int:
    """The official SDK's size estimate of a datum in a protobuf request.

    4 bytes per text token, the byte length of images and dmel chunks, ``nbytes`` of each
    tensor and 8 bytes per CSR index.
    """
    total = 0
    for chunk in datum.model_input.chunks:
        if isinstance(chunk, EncodedTextChunk):
            total += 4 * int(chunk.tokens.size)
        elif isinstance(chunk, ImageChunk):
            total += len(chunk.data)
        elif isinstance(chunk, DmelChunk):
            total += len(chunk.dmel)
        elif isinstance(chunk, ImageAssetPointerChunk):
            total += len(chunk.location)
    return total + sum(_tensor_bytes(td) for td in datum.loss_fn_inputs.values())


def chunk_data(
    data: Sequence[Datum], *, max_len: int = MAX_CHUNK_LEN, max_bytes: int = MAX_CHUNK_BYTES
) -> list[list[Datum]]:
    """Split ``data`` in order into chunks of ≤ ``max_len`` datums and ≤ ``max_bytes`` estimated
    bytes (a single datum larger than ``max_bytes`` gets a chunk of its own)."""
    counts = chunk_counts(
        [estimate_datum_bytes(d) for d in data], max_len=max_len, max_bytes=max_bytes
    )
    return split_by_counts(data, counts)


def split_by_counts(items: Sequence[T], counts: Sequence[int]) -> list[list[T]]:
    """``items`` cut in order into lists of ``counts[0]``, ``counts[1]``, … items."""
    out, start = [], 0
    for count in counts:
        out.append(list(items[start : start + count]))
        start += count
    return out


def chunk_counts(sizes: Sequence[int], *, max_len: int, max_bytes: int) -> list[int]:
    """How many items of ``sizes`` (bytes per item, in order) go in each chunk: ≤ ``max_len``
    items and ≤ ``max_bytes`` bytes per chunk, an item larger than that alone."""
    counts: list[int] = []
    count = size = 0
    for n in sizes:
        if count and (size + n > max_bytes or count >= max_len):
            counts.append(count)
            count = size = 0
        count += 1
        size += n
    if count:
        counts.append(count)
    return counts


_KNOWN = frozenset({"sum", "min", "max", "mean", "slack", "hash2", "hash_unordered", "unique"})


def _reduce(reduction: str, values: list[float], weights: list[int]) -> float | None:
    arr = np.asarray(values, dtype=np.float64)
    if reduction == "sum":
        return float(arr.sum())
    if reduction == "min":
        return float(arr.min())
    if reduction == "max":
        return float(arr.max())
    w = np.asarray(weights, dtype=np.float64)
    mean = float(np.average(arr, weights=w)) if w.sum() > 0 else float(arr.mean())
    if reduction == "mean":
        return mean
    if reduction == "slack":
        return float(arr.max()) - mean
    if reduction in ("hash2", "hash_unordered"):
        mask = 0xFFFF_FFFF_FFFF_FFFF
        return float(sum(int(v) & mask for v in values) & mask)
    return None


def combine_outputs(outputs: Sequence[ForwardBackwardOutput]) -> ForwardBackwardOutput:
    """Combine per-chunk results: outputs concatenated in order, metrics reduced by suffix.

    Reductions (the part after ``:``): ``sum``, ``min``, ``max``, ``mean`` (weighted by each
    chunk's datum count), ``slack`` (max − weighted mean), ``hash2``/``hash_unordered`` (sum
    of the 64-bit values mod 2⁶⁴), ``unique`` (first value kept, the others as ``key_1``,
    ``key_2``, …). A key without a known reduction, or missing from a chunk, is dropped (as
    the official SDK does); a key without ``:`` raises ``ValueError``.
    """
    if not outputs:
        return ForwardBackwardOutput(loss_fn_output_type="", loss_fn_outputs=[], metrics={})
    if len(outputs) == 1 and all(_split(k)[1] in _KNOWN for k in outputs[0].metrics):
        return outputs[0]
    weights = [len(o.loss_fn_outputs) for o in outputs]
    metrics: dict[str, float] = {}
    for key in outputs[0].metrics:
        _, reduction = _split(key)
        if not all(key in o.metrics for o in outputs):
            continue
        values = [o.metrics[key] for o in outputs]
        if reduction == "unique":
            metrics[key] = values[0]
            metrics.update({f"{key}_{i + 1}": v for i, v in enumerate(values[1:])})
            continue
        reduced = _reduce(reduction, values, weights)
        if reduced is None:
            logger.debug("dropping metric %r: unknown reduction %r", key, reduction)
            continue
        metrics[key] = reduced
    return ForwardBackwardOutput(
        loss_fn_output_type=outputs[0].loss_fn_output_type,
        loss_fn_outputs=[o for out in outputs for o in out.loss_fn_outputs],
        metrics=metrics,
    )


def _split(key: str) -> tuple[str, str]:
    parts = key.split(":")
    if len(parts) != 2:
        raise ValueError(f"metric key {key!r} must be exactly 'name:reduction'")
    return parts[0], parts[1]
