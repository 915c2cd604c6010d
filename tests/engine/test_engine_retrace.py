"""Compile once: a stream of ragged batches compiles once per bucket, weights never."""

from __future__ import annotations

import numpy as np

import tinkjax.regularizers as R
from tinkjax.engine import Bucketing, compute_custom_loss, pack_inputs, trace_count


def _stream_batch(rng: np.random.Generator) -> tuple[list[dict[str, np.ndarray]], list[np.ndarray]]:
    n_seq = int(rng.integers(5, 9))  # sequence buckets 6 and 8
    lengths = rng.integers(1, 200, size=n_seq)  # token buckets 384 to 1536
    lps = [-rng.exponential(size=int(n)).astype(np.float32) for n in lengths]
    inputs = [
        {
            "target_tokens": np.zeros(lp.shape, np.int64),
            "logprobs": lp + np.float32(0.1),
            "advantages": np.ones(lp.shape, np.float32),
        }
        for lp in lps
    ]
    return inputs, lps


def test_ragged_stream_compiles_once_per_bucket() -> None:
    rng = np.random.default_rng(3)
    bucketing = Bucketing()
    buckets: set[tuple[int, int]] = set()
    before = trace_count()
    for step in range(40):
        inputs, lps = _stream_batch(rng)
        # specs rebuilt every step with new weights and parameter values: still one program
        regs = [
            R.l1(weight=0.01 * step, center=-0.1 * step, name="l1"),
            R.sequence_variance(weight=float(step)),
        ]
        result = compute_custom_loss(
            inputs,
            lps,
            "ppo",
            regularizers=regs,
            loss_fn_config={"clip_low_threshold": 0.5 + 0.01 * step},
        )
        assert np.isfinite(result.loss_total)
        batch = pack_inputs(inputs, lps, dtype=np.float32, bucketing=bucketing).batch
        buckets.add((batch.mask.shape[0], batch.seq_valid.shape[0]))
    assert 1 < len(buckets) <= 8
    assert trace_count() - before == len(buckets)


def test_weight_and_param_sweep_never_retraces() -> None:
    rng = np.random.default_rng(4)
    inputs, lps = _stream_batch(rng)
    regs = [R.l2(weight=1.0, center=0.0), R.entropy(weight=-0.1)]
    compute_custom_loss(
        inputs, lps, "importance_sampling", regularizers=regs, track_grad_norms=True
    )
    before = trace_count()
    values = []
    for w in np.linspace(-1.0, 1.0, 8):
        swept = [regs[0].with_weight(float(w)).with_params(center=float(w)), regs[1]]
        result = compute_custom_loss(
            inputs, lps, "importance_sampling", regularizers=swept, track_grad_norms=True
        )
        values.append(result.regularizers["l2"].value)
    assert trace_count() == before
    assert len(set(values)) == 8  # the traced parameter really changed the value
