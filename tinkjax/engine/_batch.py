"""The packed batch the jitted engine sees, and the helpers loss functions use on it.

Layout ("chunked packed", engine study §2.4): every datum's target-token positions are
concatenated along the first axis; each datum is padded to a multiple of ``chunk`` (64)
positions, and the whole token axis to a bucketed size ``T``. Per-sequence reductions reduce
each chunk with a reshape-sum and then ``segment_sum`` the ``T / chunk`` chunk totals, which is
close to the speed of a padded ``[B, L]`` layout with under 4 % padding, instead of a scatter
over all ``T`` tokens.

Padded positions (inside a datum's last chunk and at the tail) have ``mask == 0``; tail padding
belongs to the last segment id so the ids stay sorted. The reductions select real entries with
``where``, never by multiplying with the mask: a term that is infinite where a padded logprob is
0 (``-log1p(-exp(lp))``, ``log(-lp)``, ``1/lp``) would make ``inf · 0 = NaN``. The NaN that
such a term's gradient still has on padded positions is dropped by the engine, which selects
the gradient of real positions with ``where`` too. Padded sequences (``B`` is bucketed
too) have ``seq_valid == 0`` and length 0; every division uses ``maximum(count, 1)`` so their
gradients stay finite.

The schema is fixed: every standard loss input is always present (a zero-filled placeholder
when the data lacks it), so the pytree structure, and with it the compiled program, never
depends on which optional inputs a step happened to carry. Which inputs were *really* given is
known on the host and checked against what the loss and regularizers require.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import jax
import jax.numpy as jnp

from tinkjax.engine._errors import EngineInputError

Array = jax.Array

#: Batch attribute for each standard ``loss_fn_inputs`` key (Tinker's names on the left).
STANDARD_INPUTS: Mapping[str, str] = {
    "target_tokens": "target_tokens",
    "weights": "weights",
    "advantages": "advantages",
    "logprobs": "sampler_logprobs",
    "reference_logprobs": "reference_logprobs",
    "paired_logprobs": "paired_logprobs",
}


@dataclasses.dataclass(frozen=True)
class LossBatch:
    """Packed loss inputs of one step (a JAX pytree; ``chunk`` is static).

    Token arrays have shape ``[T]`` (or ``[T, K]`` when every datum's target tokens are
    ``[n, K]``), the shape of the packed logprobs. ``B`` is the bucketed number of sequences.

    Attributes:
        mask: [T(, K)] float, 1 on real target positions, 0 on padding.
        segment_ids: [T] int32, datum index of each position (sorted; padding: last id).
        chunk_segment_ids: [T // chunk] int32, datum index of each chunk.
        seq_valid: [B] float, 1 for real sequences, 0 for bucket padding.
        seq_lengths: [B] float, number of real entries of each sequence (positions × K).
        target_tokens: [T(, K)] int32.
        weights, advantages: [T(, K)] float (zeros when absent).
        sampler_logprobs: [T(, K)] float, Tinker's ``logprobs`` input: the sampler's logprobs.
        reference_logprobs, paired_logprobs: [T(, K)] float (zeros when absent).
        extras: other token-shaped inputs by their ``loss_fn_inputs`` key.
        chunk: static chunk length (positions).
    """

    mask: Array
    segment_ids: Array
    chunk_segment_ids: Array
    seq_valid: Array
    seq_lengths: Array
    target_tokens: Array
    weights: Array
    advantages: Array
    sampler_logprobs: Array
    reference_logprobs: Array
    paired_logprobs: Array
    extras: Mapping[str, Array]
    chunk: int = dataclasses.field(metadata={"static": True})

    @property
    def num_chunks(self) -> int:
        """Static number of chunks, ``T // chunk``."""
        return int(self.chunk_segment_ids.shape[0])

    @property
    def max_sequences(self) -> int:
        """Static bucketed number of sequences ``B``."""
        return int(self.seq_valid.shape[0])

    @property
    def num_tokens(self) -> Array:
        """[] float, number of real entries in the batch."""
        return jnp.sum(self.seq_lengths)

    @property
    def num_sequences(self) -> Array:
        """[] float, number of real sequences."""
        return jnp.sum(self.seq_valid)

    def real(self, x: Array) -> Array:
        """``x`` on real entries, 0 on padding (selected with ``where``: a NaN or ±inf on a
        padded entry does not leak into a sum). ``x``: token-shaped."""
        return jnp.where(self.mask > 0, x, jnp.zeros((), x.dtype))

    def token_sum(self, x: Array) -> Array:
        """Σ of ``x`` over real entries. ``x``: token-shaped. Returns [] float."""
        return jnp.sum(self.real(x))

    def token_mean(self, x: Array) -> Array:
        """Mean of ``x`` over all real entries of the batch (0 for an empty batch)."""
        return self.token_sum(x) / jnp.maximum(self.num_tokens, 1.0)

    def seq_sum(self, x: Array) -> Array:
        """Per-sequence Σ of ``x`` over real entries. ``x``: token-shaped. Returns [B]."""
        per_chunk = jnp.sum(self.real(x).reshape(self.num_chunks, -1), axis=1)
        return jax.ops.segment_sum(
            per_chunk,
            self.chunk_segment_ids,
            num_segments=self.max_sequences,
            indices_are_sorted=True,
        )

    def seq_mean(self, x: Array) -> Array:
        """Per-sequence length-normalised mean of ``x``. Returns [B] (0 for empty/padding)."""
        return self.seq_sum(x) / jnp.maximum(self.seq_lengths, 1.0)

    def sequence_mean(self, v: Array) -> Array:
        """Mean of a per-sequence value ``v: [B]`` over the real sequences. Returns []."""
        real = jnp.where(self.seq_valid > 0, v, jnp.zeros((), v.dtype))
        return jnp.sum(real) / jnp.maximum(self.num_sequences, 1.0)

    def per_token(self, v: Array) -> Array:
        """Broadcast a per-sequence value ``v: [B]`` to every position. Returns token-shaped."""
        per_chunk = v[self.chunk_segment_ids]
        width = math.prod(self.mask.shape) // self.num_chunks
        tiled = jnp.broadcast_to(per_chunk[:, None], (self.num_chunks, width))
        return tiled.reshape(self.mask.shape)

    def input(self, key: str) -> Array:
        """A loss input by its ``loss_fn_inputs`` key (standard or extra)."""
        attr = STANDARD_INPUTS.get(key)
        if attr is not None:
            value: Array = getattr(self, attr)
            return value
        if key in self.extras:
            return self.extras[key]
        raise EngineInputError(
            f"loss input {key!r} is not in the batch; available: "
            f"{sorted([*STANDARD_INPUTS, *self.extras])}"
        )


jax.tree_util.register_dataclass(LossBatch)


def bucket_size(n: int, *, minimum: int, growth: float) -> int:
    """Smallest ladder value ≥ ``n``.

    The ladder is ``minimum · 2^k`` for ``growth=2``, and ``minimum · {1, 1.5} · 2^k``
    (steps of ×1.5 and ×1.33, at most +50 % padding, ≈ a √2 ladder) for ``growth=1.5``.
    ``minimum`` must be even so every rung is an integer multiple of ``minimum / 2``.
    """
    if growth not in (1.5, 2.0):
        raise EngineInputError(f"bucket growth must be 1.5 or 2.0, got {growth!r}")
    size = minimum
    while True:
        if size >= n:
            return size
        if growth == 1.5 and size * 3 // 2 >= n:
            return size * 3 // 2
        size *= 2
