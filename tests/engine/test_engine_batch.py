"""Packing ragged data into the chunked, bucketed layout, and the batch helpers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tinkjax.engine import (
    Bucketing,
    EngineInputError,
    LossBatch,
    NonFiniteError,
    bucket_size,
    pack_inputs,
)

RNG = np.random.default_rng(7)
LENGTHS = (5, 70, 0, 129)


def _data(
    lengths: tuple[int, ...], k: int | None = None
) -> tuple[list[dict[str, np.ndarray]], list[np.ndarray]]:
    inputs, lps = [], []
    for n in lengths:
        shape = (n,) if k is None else (n, k)
        lps.append(-RNG.exponential(size=shape).astype(np.float32))
        inputs.append(
            {
                "target_tokens": RNG.integers(0, 50, size=shape),
                "advantages": RNG.normal(size=shape).astype(np.float32),
                "custom_key": RNG.normal(size=shape).astype(np.float32),
            }
        )
    return inputs, lps


@pytest.mark.parametrize(
    ("n", "growth", "expected"),
    [
        (1, 1.5, 256),
        (256, 1.5, 256),
        (257, 1.5, 384),
        (385, 1.5, 512),
        (513, 2.0, 1024),
        (3000, 1.5, 3072),
        (3073, 1.5, 4096),
        (5, 2.0, 8),
    ],
)
def test_bucket_ladder(n: int, growth: float, expected: int) -> None:
    minimum = 4 if expected == 8 else 256
    assert bucket_size(n, minimum=minimum, growth=growth) == expected


def test_bucket_ladder_rejects_other_growth() -> None:
    with pytest.raises(EngineInputError, match="growth"):
        bucket_size(10, minimum=4, growth=1.41)
    with pytest.raises(EngineInputError, match="min_tokens"):
        Bucketing(min_tokens=100)


def test_pack_layout_padding_and_schema() -> None:
    inputs, lps = _data(LENGTHS)
    packed = pack_inputs(inputs, lps, dtype=np.float32, bucketing=Bucketing())
    b = packed.batch
    # 5→64, 70→128, 0→0, 129→192 positions: 384 used, bucket 384; 4 sequences → bucket 4
    assert packed.layout.offsets == (0, 64, 192, 192)
    assert b.mask.shape == (384,)
    assert b.seq_valid.shape == (4,)
    assert np.asarray(b.mask).sum() == sum(LENGTHS)
    seg = np.asarray(b.segment_ids)
    assert (np.diff(seg) >= 0).all()
    assert seg[-1] == 3
    np.testing.assert_array_equal(np.asarray(b.seq_lengths), [5, 70, 0, 129])
    # fixed schema: absent standard inputs are zero placeholders, unknown keys are extras
    assert not np.asarray(b.weights).any()
    assert not np.asarray(b.reference_logprobs).any()
    assert set(b.extras) == {"custom_key"}
    assert np.asarray(b.target_tokens).dtype == np.int32
    assert packed.layout.present == ("advantages", "custom_key", "target_tokens")
    for got, want in zip(packed.layout.split(packed.logprobs), lps, strict=True):
        np.testing.assert_array_equal(got, want)
    assert packed.layout.datum_at(64 + 69) == 1
    assert packed.layout.datum_at(64 + 70) is None


def test_helpers_match_numpy_under_jit() -> None:
    inputs, lps = _data(LENGTHS, k=3)
    packed = pack_inputs(inputs, lps, dtype=np.float32, bucketing=Bucketing(min_sequences=6))
    x = jnp.asarray(packed.logprobs)

    @jax.jit
    def helpers(batch: LossBatch, x: jax.Array) -> dict[str, jax.Array]:
        return {
            "seq_sum": batch.seq_sum(x),
            "seq_mean": batch.seq_mean(x),
            "token_mean": batch.token_mean(x),
            "seq_avg": batch.sequence_mean(batch.seq_mean(x)),
            "per_token": batch.per_token(jnp.arange(6.0)),
            "extra": batch.input("custom_key"),
        }

    out = jax.device_get(helpers(packed.batch, x))
    sums = [lp.sum() for lp in lps]
    means = [lp.mean() if lp.size else 0.0 for lp in lps]
    np.testing.assert_allclose(out["seq_sum"], [*sums, 0, 0], rtol=1e-5)
    np.testing.assert_allclose(out["seq_mean"], [*means, 0, 0], rtol=1e-5)
    np.testing.assert_allclose(out["token_mean"], np.concatenate(lps, axis=0).mean(), rtol=1e-5)
    np.testing.assert_allclose(out["seq_avg"], np.mean(means), rtol=1e-5)
    for i, (off, shape) in enumerate(zip(packed.layout.offsets, packed.layout.shapes, strict=True)):
        assert (out["per_token"][off : off + shape[0]] == i).all()
        np.testing.assert_array_equal(out["extra"][off : off + shape[0]], inputs[i]["custom_key"])


def test_pack_rejects_bad_inputs() -> None:
    inputs, lps = _data((4, 6))
    bucketing = Bucketing()
    with pytest.raises(EngineInputError, match="2 datums but 1 logprobs"):
        pack_inputs(inputs, lps[:1], dtype=np.float32, bucketing=bucketing)
    bad = [dict(inputs[0]), dict(inputs[1], advantages=np.zeros(5, np.float32))]
    with pytest.raises(EngineInputError, match=r"'advantages' of datum 1 has shape \(5,\)"):
        pack_inputs(bad, lps, dtype=np.float32, bucketing=bucketing)
    with pytest.raises(
        EngineInputError, match=r"datum 1 has loss inputs.*missing \['custom_key'\]"
    ):
        pack_inputs(
            [inputs[0], {k: v for k, v in inputs[1].items() if k != "custom_key"}],
            lps,
            dtype=np.float32,
            bucketing=bucketing,
        )
    with pytest.raises(EngineInputError, match="same trailing shape"):
        pack_inputs(
            inputs, [lps[0], np.zeros((6, 2), np.float32)], dtype=np.float32, bucketing=bucketing
        )
    with pytest.raises(EngineInputError, match="'target_tokens' of datum 0 has dtype float32"):
        pack_inputs(
            [dict(inputs[0], target_tokens=lps[0]), inputs[1]],
            lps,
            dtype=np.float32,
            bucketing=bucketing,
        )
    with pytest.raises(EngineInputError, match="empty"):
        pack_inputs([], [], dtype=np.float32, bucketing=bucketing)
    nan = [lps[0], lps[1].copy()]
    nan[1][2] = np.nan
    with pytest.raises(NonFiniteError, match="logprobs of datum 1") as info:
        pack_inputs(inputs, nan, dtype=np.float32, bucketing=bucketing)
    assert info.value.datum == 1
