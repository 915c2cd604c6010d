"""Host-side validation of datums and their packing into bucketed, padded arrays.

Shapes are bucketed so that varied requests reuse a handful of compiled programs: sequence
length on ``32 * 2**j``, rows on powers of two from 4, target width ``K`` and
adapters-per-batch on powers of two.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from tinkjax.losses import get_loss_definition
from tinkjax.models._types import DatumArrays, ValidDatum

__all__ = [
    "PackedBatch",
    "bucket_length",
    "bucket_pow2",
    "pack_rows",
    "validate_datum",
]

MIN_LENGTH_BUCKET = 32
MIN_ROW_BUCKET = 4
MAX_TOKENS_PER_BATCH = 16384  # rows x length x K of one compiled call


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


@dataclass(frozen=True)
class PackedBatch:
    """Padded arrays of one compiled call (see ``forward_backward_core``)."""

    batch_slots: np.ndarray  # [k] int32
    scale: np.ndarray  # [k]
    row_slot: np.ndarray  # [B] int32
    tokens: np.ndarray  # [B, T] int32
    targets: np.ndarray  # [B, T, K] int32
    valid: np.ndarray  # [B, T, K] bool
    inputs: dict[str, np.ndarray]  # [B, T, K]
    loss_config: dict[str, np.ndarray]  # [B]


def pack_rows(
    rows: Sequence[tuple[ValidDatum, int, Mapping[str, float]]],
    *,
    slot_scale: np.ndarray,
    input_keys: Sequence[str],
    config_keys: Sequence[str],
    length: int,
    width: int,
    dtype: np.dtype,
) -> PackedBatch:
    """Packs ``(datum, stack slot, resolved config)`` rows into bucketed arrays.

    Padding rows, positions and ``K`` columns are zero with ``valid`` false; padding rows use
    batch adapter 0 and the first row's config.
    """
    used: list[int] = []
    for _, slot, _ in rows:
        if slot not in used:
            used.append(slot)
    k = bucket_pow2(len(used))
    batch_slots = np.array(used + [used[0]] * (k - len(used)), np.int32)
    n_rows = bucket_rows(len(rows))
    tokens = np.zeros((n_rows, length), np.int32)
    targets = np.zeros((n_rows, length, width), np.int32)
    valid = np.zeros((n_rows, length, width), bool)
    inputs = {key: np.zeros((n_rows, length, width), dtype) for key in input_keys}
    first_config = rows[0][2]
    loss_config = {key: np.full((n_rows,), first_config[key], dtype) for key in config_keys}
    row_slot = np.zeros((n_rows,), np.int32)
    for r, (datum, slot, config) in enumerate(rows):
        n, kk = datum.targets.shape
        tokens[r, :n] = datum.tokens
        targets[r, :n, :kk] = datum.targets
        valid[r, :n, :kk] = True
        for key in input_keys:
            inputs[key][r, :n, :kk] = datum.inputs[key]
        for key in config_keys:
            loss_config[key][r] = config[key]
        row_slot[r] = used.index(slot)
    return PackedBatch(
        batch_slots, slot_scale[batch_slots].astype(dtype), row_slot, tokens, targets, valid,
        inputs, loss_config,
    )  # fmt: skip
