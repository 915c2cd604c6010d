"""Host side: ragged per-datum NumPy arrays → bucketed ``LossBatch``, and gradients back."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from tinkjax.engine._batch import STANDARD_INPUTS, LossBatch, bucket_size
from tinkjax.engine._errors import EngineInputError, NonFiniteError


@dataclasses.dataclass(frozen=True)
class Bucketing:
    """How ragged batches are padded to a small set of compiled shapes.

    Attributes:
        chunk: each datum is padded to a multiple of this many positions.
        token_growth: step of the token-count ladder, 1.5 (≈√2 steps) or 2.0.
        sequence_growth: step of the sequence-count ladder, 1.5 or 2.0.
        min_tokens: smallest token bucket (a multiple of ``2 * chunk``).
        min_sequences: smallest sequence bucket (even).
    """

    chunk: int = 64
    token_growth: float = 1.5
    sequence_growth: float = 1.5
    min_tokens: int = 256
    min_sequences: int = 4

    def __post_init__(self) -> None:
        if self.chunk < 1:
            raise EngineInputError(f"Bucketing.chunk must be ≥ 1, got {self.chunk}")
        if self.min_tokens < 2 * self.chunk or self.min_tokens % (2 * self.chunk):
            raise EngineInputError(
                f"Bucketing.min_tokens must be a multiple of 2*chunk={2 * self.chunk}, "
                f"got {self.min_tokens}"
            )
        if self.min_sequences < 2 or self.min_sequences % 2:
            raise EngineInputError(
                f"Bucketing.min_sequences must be even and ≥ 2, got {self.min_sequences}"
            )
        for name in ("token_growth", "sequence_growth"):
            if getattr(self, name) not in (1.5, 2.0):
                raise EngineInputError(
                    f"Bucketing.{name} must be 1.5 or 2.0, got {getattr(self, name)!r}"
                )


#: The default padding ladder.
DEFAULT_BUCKETING = Bucketing()


@dataclasses.dataclass(frozen=True)
class DatumLayout:
    """Where each datum lives in the packed token axis (hashable; static under ``jit``).

    Attributes:
        offsets: first packed position of each datum.
        shapes: each datum's logprobs shape, ``(n,)`` or ``(n, K)``.
        present: the ``loss_fn_inputs`` keys the data really carried, sorted.
    """

    offsets: tuple[int, ...]
    shapes: tuple[tuple[int, ...], ...]
    present: tuple[str, ...]

    def split(self, packed: npt.NDArray[Any]) -> list[npt.NDArray[Any]]:
        """Per-datum views of a packed token array (padding dropped)."""
        return [
            packed[off : off + shape[0]].reshape(shape)
            for off, shape in zip(self.offsets, self.shapes, strict=True)
        ]

    def datum_at(self, position: int) -> int | None:
        """Index of the datum owning packed ``position``, ``None`` for padding."""
        index = int(np.searchsorted(np.asarray(self.offsets), position, side="right")) - 1
        if index >= 0 and position < self.offsets[index] + self.shapes[index][0]:
            return index
        return None


@dataclasses.dataclass(frozen=True)
class PackedInputs:
    """A packed step: the batch, the packed logprobs (NumPy) and the layout."""

    batch: LossBatch
    logprobs: npt.NDArray[Any]
    layout: DatumLayout

    @property
    def token_shape(self) -> tuple[int, ...]:
        """Shape of the packed token arrays."""
        return tuple(self.logprobs.shape)


@dataclasses.dataclass(frozen=True, eq=False)
class PackedBatch:
    """The loss inputs of a step, packed and waiting for their logprobs (so a client can pack
    them while the forward pass that yields the logprobs is still running).

    Attributes:
        batch: the packed :class:`LossBatch`.
        layout: where each datum lives on the packed token axis.
        dtype: float dtype of the packed floats.
    """

    batch: LossBatch
    layout: DatumLayout
    dtype: np.dtype[Any]
    rows: int  # packed length of the token axis
    positions: slice | npt.NDArray[np.int64]  # every real position, datum after datum

    @property
    def token_shape(self) -> tuple[int, ...]:
        """Shape of the packed token arrays."""
        return (self.rows, *self.layout.shapes[0][1:])

    def with_logprobs(self, logprobs: Sequence[npt.ArrayLike]) -> PackedInputs:
        """Check the per-datum logprobs against the layout and pack them.

        Raises:
            EngineInputError: wrong count, shape or dtype (the message names the datum).
            NonFiniteError: a datum's logprobs contain NaN or ±Inf.
        """
        lps = [np.asarray(lp) for lp in logprobs]
        shapes = self.layout.shapes
        if len(lps) != len(shapes):
            raise EngineInputError(f"got {len(lps)} logprobs arrays for {len(shapes)} datums")
        for i, (lp, shape) in enumerate(zip(lps, shapes, strict=True)):
            if lp.shape != shape:
                raise EngineInputError(
                    f"logprobs of datum {i} have shape {lp.shape}, but its loss inputs have "
                    f"shape {shape}"
                )
        _check_logprobs(lps)
        return self.with_checked_logprobs(lps)

    def with_checked_logprobs(self, lps: Sequence[npt.NDArray[Any]]) -> PackedInputs:
        """:meth:`with_logprobs` for logprobs already checked (by :func:`checked_logprobs`)."""
        packed = _scatter(lps, self.rows, self.positions, self.layout.shapes[0][1:], self.dtype)
        return PackedInputs(batch=self.batch, logprobs=packed, layout=self.layout)


def _scatter(
    arrays: Sequence[npt.NDArray[Any]],
    rows: int,
    positions: slice | npt.NDArray[np.int64],
    trailing: tuple[int, ...],
    dtype: npt.DTypeLike,
) -> npt.NDArray[Any]:
    """Per-datum arrays laid onto a zero ``[rows, *trailing]`` array at ``positions``."""
    out = np.zeros((rows, *trailing), dtype=dtype)
    if arrays and out.size:
        out[positions] = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
    return out


def pack_inputs(
    inputs: Sequence[Mapping[str, npt.ArrayLike]],
    logprobs: Sequence[npt.ArrayLike],
    *,
    dtype: npt.DTypeLike,
    bucketing: Bucketing,
) -> PackedInputs:
    """Pack ragged per-datum loss inputs and logprobs into one bucketed batch.

    Args:
        inputs: per datum, its ``loss_fn_inputs`` as arrays shaped like its logprobs.
            Every datum must carry the same keys.
        logprobs: per datum, target-token logprobs ``[n]`` or ``[n, K]`` (one ``K``).
        dtype: float dtype of the packed floats.
        bucketing: padding ladder.

    Raises:
        EngineInputError: mismatched counts, shapes, keys or dtypes (message names the datum).
        NonFiniteError: a datum's logprobs contain NaN or ±Inf.
    """
    lps = checked_logprobs(inputs, logprobs)
    shapes = [lp.shape for lp in lps]
    return pack_batch(inputs, shapes, dtype=dtype, bucketing=bucketing).with_checked_logprobs(lps)


def checked_logprobs(
    inputs: Sequence[Mapping[str, npt.ArrayLike]], logprobs: Sequence[npt.ArrayLike]
) -> list[npt.NDArray[Any]]:
    """The per-datum logprobs as arrays, checked: one per datum, ``[n]`` or ``[n, K]`` with
    one ``K``, floating, finite.

    Raises:
        EngineInputError: a count, shape or dtype problem (naming the datum).
        NonFiniteError: a datum's logprobs contain NaN or ±Inf.
    """
    if len(inputs) != len(logprobs):
        raise EngineInputError(
            f"got {len(inputs)} datums but {len(logprobs)} logprobs arrays; they must match"
        )
    if not inputs:
        raise EngineInputError("the batch is empty: at least one datum is required")
    lps = [np.asarray(lp) for lp in logprobs]
    _check_logprobs(lps)
    return lps


def pack_batch(
    inputs: Sequence[Mapping[str, npt.ArrayLike]],
    shapes: Sequence[tuple[int, ...]],
    *,
    dtype: npt.DTypeLike,
    bucketing: Bucketing,
) -> PackedBatch:
    """Pack ragged per-datum loss inputs whose logprobs will have ``shapes`` (``[n]`` or
    ``[n, K]`` per datum, one ``K``); add the logprobs with :meth:`PackedBatch.with_logprobs`.

    Raises:
        EngineInputError: mismatched counts, shapes, keys or dtypes (message names the datum).
    """
    if len(inputs) != len(shapes):
        raise EngineInputError(f"got {len(inputs)} datums but {len(shapes)} logprobs shapes")
    if not inputs:
        raise EngineInputError("the batch is empty: at least one datum is required")
    shapes = tuple(tuple(int(d) for d in s) for s in shapes)
    _check_shapes(shapes)
    trailing = shapes[0][1:]
    keys = _check_keys(inputs)
    chunk = bucketing.chunk
    lengths = np.fromiter((s[0] for s in shapes), dtype=np.int64, count=len(shapes))
    padded = -(-lengths // chunk) * chunk
    offsets_np = np.cumsum(padded) - padded
    total = bucket_size(
        int(padded.sum()), minimum=bucketing.min_tokens, growth=bucketing.token_growth
    )
    n_seq = bucket_size(
        len(shapes), minimum=bucketing.min_sequences, growth=bucketing.sequence_growth
    )
    layout = DatumLayout(
        offsets=tuple(offsets_np.tolist()), shapes=shapes, present=tuple(sorted(keys))
    )
    float_dtype = np.dtype(dtype)
    # Every real position of the packed axis, datum after datum: one fancy-index store per
    # field instead of a slice assignment per datum.
    n_real = int(lengths.sum())
    positions: npt.NDArray[np.int64] | slice = (
        slice(0, n_real)
        if np.array_equal(padded, lengths)
        else np.arange(n_real) + np.repeat(offsets_np - (np.cumsum(lengths) - lengths), lengths)
    )

    def field(key: str, out_dtype: npt.DTypeLike) -> npt.NDArray[Any]:
        if key not in keys:
            return np.zeros((total, *trailing), dtype=out_dtype)
        arrays = [np.asarray(item[key]) for item in inputs]
        for i, (arr, shape) in enumerate(zip(arrays, shapes, strict=True)):
            if arr.shape != shape:
                raise EngineInputError(
                    f"loss input {key!r} of datum {i} has shape {arr.shape}, but its "
                    f"logprobs have shape {shape}"
                )
            if key == "target_tokens" and arr.dtype.kind not in "iu":
                raise EngineInputError(
                    f"loss input 'target_tokens' of datum {i} has dtype {arr.dtype}; "
                    "integers required"
                )
        return _scatter(arrays, total, positions, trailing, out_dtype)

    mask = np.zeros((total, *trailing), dtype=float_dtype)
    mask[positions] = 1.0
    seg_per_chunk = np.full(total // chunk, n_seq - 1, dtype=np.int32)
    used = np.repeat(np.arange(len(shapes), dtype=np.int32), padded // chunk)
    seg_per_chunk[: used.size] = used
    seq_valid = np.zeros(n_seq, dtype=float_dtype)
    seq_valid[: len(shapes)] = 1.0
    seq_lengths = np.zeros(n_seq, dtype=float_dtype)
    seq_lengths[: len(shapes)] = lengths * math.prod(trailing)
    std = {attr: field(key, float_dtype) for key, attr in STANDARD_INPUTS.items()}
    std["target_tokens"] = field("target_tokens", np.int32)
    extras = {k: field(k, float_dtype) for k in sorted(keys - STANDARD_INPUTS.keys())}
    fields: dict[str, Any] = dict(
        mask=mask,
        segment_ids=np.repeat(seg_per_chunk, chunk),
        chunk_segment_ids=seg_per_chunk,
        seq_valid=seq_valid,
        seq_lengths=seq_lengths,
        extras=extras,
        **std,
    )
    # host arrays: jit's C++ dispatch transfers them faster than a Python-level device_put
    batch = LossBatch(chunk=chunk, **fields)
    return PackedBatch(batch, layout, float_dtype, total, positions)


def pack_per_datum(
    values: Sequence[npt.ArrayLike],
    like: PackedInputs | PackedBatch,
    *,
    dtype: npt.DTypeLike,
    what: str,
) -> npt.NDArray[Any]:
    """Pack one value per datum: scalars → ``[B]``; logprob-shaped arrays → token-shaped.

    ``what`` names the value in error messages.
    """
    layout = like.layout
    if len(values) != len(layout.shapes):
        raise EngineInputError(f"{what}: got {len(values)} values for {len(layout.shapes)} datums")
    arrays = [np.asarray(v, dtype=dtype) for v in values]
    if all(a.ndim == 0 for a in arrays):
        out = np.zeros(like.batch.seq_valid.shape, dtype=dtype)
        out[: len(arrays)] = arrays
        return out
    out = np.zeros(like.token_shape, dtype=dtype)
    for i, (arr, off, shape) in enumerate(zip(arrays, layout.offsets, layout.shapes, strict=True)):
        if arr.shape != shape:
            raise EngineInputError(
                f"{what}: value of datum {i} has shape {arr.shape}; expected a scalar for "
                f"every datum or the datum's logprobs shape {shape}"
            )
        out[off : off + shape[0]] = arr
    return out


def _check_shapes(shapes: Sequence[tuple[int, ...]]) -> None:
    """Every datum's logprobs shape is ``[n]`` or ``[n, K]``, with datum 0's trailing shape."""
    trailing = shapes[0][1:]
    for i, shape in enumerate(shapes):
        if len(shape) not in (1, 2):
            raise EngineInputError(
                f"logprobs of datum {i} have shape {shape}; expected [n] or [n, K]"
            )
        if shape[1:] != trailing:
            raise EngineInputError(
                f"logprobs of datum {i} have shape {shape}, but datum 0 has {shapes[0]}; "
                "all datums need the same trailing shape"
            )


def _check_logprobs(lps: Sequence[npt.NDArray[Any]]) -> None:
    _check_shapes([lp.shape for lp in lps])
    for i, lp in enumerate(lps):
        if lp.dtype.kind != "f":
            raise EngineInputError(f"logprobs of datum {i} have dtype {lp.dtype}; floats required")
    flat = lps[0] if len(lps) == 1 else np.concatenate([lp.reshape(-1) for lp in lps])
    if np.isfinite(flat).all():  # one pass over the batch; the loop below only names the datum
        return
    for i, lp in enumerate(lps):
        if not np.isfinite(lp).all():
            bad = int(np.argmin(np.isfinite(lp).reshape(-1)))
            raise NonFiniteError(
                f"logprobs of datum {i} are not finite (flat index {bad}: "
                f"{lp.reshape(-1)[bad]}); nothing was computed",
                term="logprobs",
                datum=i,
            )


def _check_keys(inputs: Sequence[Mapping[str, npt.ArrayLike]]) -> set[str]:
    keys = set(inputs[0])
    for i, item in enumerate(inputs):
        if set(item) != keys:
            missing = sorted(keys - set(item))
            extra = sorted(set(item) - keys)
            raise EngineInputError(
                f"datum {i} has loss inputs {sorted(item)}, but datum 0 has {sorted(keys)} "
                f"(missing {missing}, extra {extra}); every datum needs the same keys"
            )
    return keys
