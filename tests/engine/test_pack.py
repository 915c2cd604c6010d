"""Packing ragged data into the chunked, bucketed layout."""

from __future__ import annotations

import numpy as np
import pytest

from tinkjax.engine import Bucketing, EngineInputError, NonFiniteError, pack_inputs

from .data import packing_data

LENGTHS = (5, 70, 0, 129)


def test_bucketing_rejects_min_tokens_off_the_chunk_grid() -> None:
    with pytest.raises(EngineInputError, match="min_tokens"):
        Bucketing(min_tokens=100)


def test_pack_layout_padding_and_schema() -> None:
    inputs, lps = packing_data(LENGTHS)
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


def test_pack_rejects_bad_inputs() -> None:
    inputs, lps = packing_data((4, 6))
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
