"""Host-side validation of datums and their packing into bucketed, padded arrays.

Shapes are bucketed so that varied requests reuse a handful of compiled programs: sequence
length on ``32 * 2**j`` and target width ``K`` on powers of two fix the call's chunks (a fixed
number of fixed-size chunks per ``(length, K)``: :func:`chunk_shape`); the adapters of a call
(its scratch accumulator) on powers of two.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from tinkjax.losses import get_loss_definition
from tinkjax.models._types import DatumArrays, ValidDatum

__all__ = [
    "FB_CHUNK_TOKENS",
    "MAX_TOKENS_PER_BATCH",
    "PackedBatch",
    "bucket_length",
    "bucket_pow2",
    "chunk_shape",
    "empty_batch",
    "pack_rows",
    "plan_chunks",
    "validate_datum",
]

MIN_LENGTH_BUCKET = 32
MIN_ROW_BUCKET = 4
MAX_TOKENS_PER_BATCH = 16384  # rows x length x K of one compiled call
FB_CHUNK_TOKENS = 256
"""Padded tokens (rows x length x K) per chunk of ``forward_backward_core``.

Sized so the backward pass's temporary buffer stays well under 32 MiB on the default model:
glibc serves such blocks from its heap and reuses them, while a larger block is a fresh
``mmap`` every call whose page faults cost more than the matmuls on a 2-core CPU."""


def bucket_pow2(n: int) -> int:
    """Smallest power of two ``>= max(n, 1)``."""
    return 1 << max(n - 1, 0).bit_length()


def bucket_rows(n: int) -> int:
    """Row bucket: a power of two, at least ``MIN_ROW_BUCKET`` (small batches share one
    program; a few padded rows cost less than a compile)."""
    return max(MIN_ROW_BUCKET, bucket_pow2(n))


def bucket_length(n: int) -> int:
    """Smallest ``32 * 2**j >= n``."""
    return max(MIN_LENGTH_BUCKET, bucket_pow2(n))


def _check_tokens(values: np.ndarray, field: str, vocab: int) -> np.ndarray:
    if values.dtype.kind not in "iu":
        raise ValueError(f"{field}: expected integer tokens, got dtype {values.dtype}")
    bad = (values < 0) | (values >= vocab)
    if bad.any():
        raise ValueError(f"{field}: token {int(values[bad][0])} outside [0, {vocab})")
    return values.astype(np.int32)


def validate_datum(
    datum: DatumArrays,
    *,
    where: str,
    loss_fn: str,
    vocab: int,
    max_len: int,
    dtype: np.dtype,
) -> ValidDatum:
    """Checks one datum against the model and loss ``loss_fn``.

    Raises:
        ValueError: naming the field (prefixed by ``where``) and the offending value.
    """
    tokens = _check_tokens(np.asarray(datum.input_tokens), f"{where}.input_tokens", vocab)
    if tokens.ndim != 1 or tokens.shape[0] == 0:
        raise ValueError(
            f"{where}.input_tokens: expected a non-empty 1-D array, got {tokens.shape}"
        )
    n = tokens.shape[0]
    if n > max_len:
        raise ValueError(f"{where}.input_tokens: length {n} exceeds max_seq_len {max_len}")
    definition = get_loss_definition(loss_fn)
    missing = [k for k in definition.required_inputs if k not in datum.loss_fn_inputs]
    if missing:
        raise ValueError(
            f"{where}.loss_fn_inputs: loss {loss_fn!r} requires {missing}, "
            f"got {sorted(datum.loss_fn_inputs)}"
        )
    field = f"{where}.loss_fn_inputs['target_tokens']"
    targets = _check_tokens(np.asarray(datum.loss_fn_inputs["target_tokens"]), field, vocab)
    if targets.ndim not in (1, 2) or targets.shape[0] != n or 0 in targets.shape:
        raise ValueError(
            f"{field}: shape {targets.shape} must be [{n}] or [{n}, K] (input length {n})"
        )
    one_dim = targets.ndim == 1
    inputs = {}
    for key in definition.input_arguments:
        field = f"{where}.loss_fn_inputs[{key!r}]"
        values = np.asarray(datum.loss_fn_inputs[key])
        if values.shape != targets.shape:
            raise ValueError(
                f"{field}: shape {values.shape} != target_tokens shape {targets.shape}"
            )
        if values.dtype.kind not in "fiu":
            raise ValueError(f"{field}: expected numbers, got dtype {values.dtype}")
        if not np.all(np.isfinite(values)):
            raise ValueError(f"{field}: contains non-finite values")
        inputs[key] = (values[:, None] if one_dim else values).astype(dtype)
    return ValidDatum(tokens, targets[:, None] if one_dim else targets, inputs, one_dim)


def chunk_shape(length: int, width: int) -> tuple[int, int]:
    """``(chunks, rows per chunk)`` of every compiled call of ``[length, width]`` rows.

    A chunk holds ``FB_CHUNK_TOKENS`` padded tokens (at least one row) and the rows of one
    adapter only; a call holds ``MAX_TOKENS_PER_BATCH`` tokens' worth of chunks. Both are fixed
    per ``(length, width)`` bucket, so the number of rows and of adapters in a call change no
    shape (the program loops over the chunks holding rows only, so padding costs nothing).
    """
    tokens = length * width
    per = max(1, FB_CHUNK_TOKENS // tokens)
    return max(1, MAX_TOKENS_PER_BATCH // (per * tokens)), per


@dataclass(frozen=True)
class PackedBatch:
    """Padded arrays of one compiled call (see ``forward_backward_core``): ``C`` chunks of
    ``P`` rows, each chunk the rows of one adapter."""

    batch_slots: np.ndarray  # [k] int32 stack slots of the call's adapters (k: a power of two)
    chunk_slot: np.ndarray  # [C] int32 stack slot of each chunk
    chunk_acc: np.ndarray  # [C] int32 index into batch_slots of each chunk
    n_live: np.ndarray  # int32 scalar: the first n_live chunks hold rows
    chunk_scale: np.ndarray  # [C] alpha / rank of the chunk's adapter
    tokens: np.ndarray  # [C, P, T] int32
    targets: np.ndarray  # [C, P, T, K] int32
    valid: np.ndarray  # [C, P, T, K] bool
    inputs: dict[str, np.ndarray]  # [C, P, T, K]
    loss_config: dict[str, np.ndarray]  # [C, P]
    positions: list[tuple[int, int]]  # (chunk, row) of each packed row, in input order


def plan_chunks(slots: Sequence[int], per: int) -> list[list[int]]:
    """Row indices grouped into chunks of at most ``per`` rows of one slot each: the slots
    in first-use order, each slot's rows in input order (so a slot's rows are summed in the
    same order whichever other slots share the call)."""
    by_slot: dict[int, list[int]] = {}
    for i, slot in enumerate(slots):
        by_slot.setdefault(slot, []).append(i)
    return [rows[s : s + per] for rows in by_slot.values() for s in range(0, len(rows), per)]


def empty_batch(
    *,
    length: int,
    width: int,
    adapters: int,
    input_keys: Sequence[str],
    config: Mapping[str, float],
    config_keys: Sequence[str],
    dtype: np.dtype,
) -> PackedBatch:
    """A call's arrays with no live chunk (what ``pack_rows`` fills; the warm-up runs a
    program on it): every row padding, configs ``config``, every chunk on slot 0."""
    n_chunks, per = chunk_shape(length, width)
    zeros = np.zeros((n_chunks,), np.int32)
    return PackedBatch(
        batch_slots=np.zeros((adapters,), np.int32), chunk_slot=zeros, chunk_acc=zeros,
        n_live=np.array(0, np.int32), chunk_scale=np.zeros((n_chunks,), dtype),
        tokens=np.zeros((n_chunks, per, length), np.int32),
        targets=np.zeros((n_chunks, per, length, width), np.int32),
        valid=np.zeros((n_chunks, per, length, width), bool),
        inputs={key: np.zeros((n_chunks, per, length, width), dtype) for key in input_keys},
        loss_config={key: np.full((n_chunks, per), config[key], dtype) for key in config_keys},
        positions=[],
    )  # fmt: skip


def pack_rows(
    rows: Sequence[tuple[ValidDatum, int, Mapping[str, float]]],
    chunks: Sequence[Sequence[int]],
    *,
    batch_slots: Sequence[int],
    slot_scale: np.ndarray,
    input_keys: Sequence[str],
    config_keys: Sequence[str],
    length: int,
    width: int,
    dtype: np.dtype,
) -> PackedBatch:
    """Packs ``(datum, stack slot, resolved config)`` rows into one call's chunked arrays.

    Args:
        chunks: at most ``C`` chunks (row indices into ``rows``, one slot each, at most ``P``
            rows; see :func:`plan_chunks` and :func:`chunk_shape`).
        batch_slots: ``[k]`` the scratch accumulator's stack slots (each chunk's slot among
            them).

    Padding rows, positions and ``K`` columns are zero with ``valid`` false; padding rows use
    the first row's config; chunks past the last are not live (``n_live``).
    """
    n_chunks, _ = chunk_shape(length, width)
    if len(chunks) > n_chunks:
        raise ValueError(f"chunks: {len(chunks)} exceed the call's {n_chunks}")
    index: dict[int, int] = {}
    for n, slot in enumerate(batch_slots):
        index.setdefault(int(slot), n)  # padding entries repeat a slot: its first index
    empty = empty_batch(
        length=length, width=width, adapters=len(batch_slots), input_keys=input_keys,
        config=rows[0][2], config_keys=config_keys, dtype=dtype,
    )  # fmt: skip
    tokens, targets, valid = empty.tokens, empty.targets, empty.valid
    inputs, loss_config = empty.inputs, empty.loss_config
    chunk_slot = np.full((n_chunks,), batch_slots[0], np.int32)
    positions: list[tuple[int, int]] = [(0, 0)] * len(rows)
    for c, chunk in enumerate(chunks):
        chunk_slot[c] = rows[chunk[0]][1]
        for p, r in enumerate(chunk):
            datum, slot, config = rows[r]
            if slot != chunk_slot[c]:
                raise ValueError(f"chunks[{c}]: rows of slots {chunk_slot[c]} and {slot}")
            n, kk = datum.targets.shape
            tokens[c, p, :n] = datum.tokens
            targets[c, p, :n, :kk] = datum.targets
            valid[c, p, :n, :kk] = True
            for key in input_keys:
                inputs[key][c, p, :n, :kk] = datum.inputs[key]
            for key in config_keys:
                loss_config[key][c, p] = config[key]
            positions[r] = (c, p)
    chunk_acc = np.array([index[int(s)] for s in chunk_slot], np.int32)
    return PackedBatch(
        np.asarray(batch_slots, np.int32), chunk_slot, chunk_acc, np.array(len(chunks), np.int32),
        slot_scale[chunk_slot].astype(dtype), tokens, targets, valid, inputs, loss_config,
        positions,
    )  # fmt: skip
