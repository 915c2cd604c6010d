"""The packed batch's bucket ladder and the helpers loss functions use on it."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tinkjax.engine import (
    Bucketing,
    EngineInputError,
    LossBatch,
    Regularizer,
    bucket_size,
    compute_custom_loss,
    pack_inputs,
)

from .data import packing_data, step_data

LENGTHS = (5, 70, 0, 129)


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


def test_helpers_match_numpy_under_jit() -> None:
    inputs, lps = packing_data(LENGTHS, k=3)
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


def unlikelihood(batch: LossBatch, lp: jax.Array) -> jax.Array:
    """Σ -log(1 - p): infinite where a logprob is 0, which every padded position holds."""
    return batch.token_sum(-jnp.log1p(-jnp.exp(lp)))


def unlikelihood_seq(batch: LossBatch, lp: jax.Array) -> jax.Array:
    """The same term through the per-sequence reductions."""
    return batch.sequence_mean(batch.seq_mean(-jnp.log1p(-jnp.exp(lp)))) + batch.token_mean(
        jnp.log(-lp)
    )


@pytest.mark.parametrize("track_grad_norms", [False, True])
def test_terms_infinite_on_padding_stay_finite(track_grad_norms: bool) -> None:
    inputs, lps = step_data()  # 6, 40 and 11 tokens: every datum's chunk ends in padding
    regs = [
        Regularizer("unlikely", unlikelihood, weight=1.0),
        Regularizer("unlikely_seq", unlikelihood_seq, weight=0.5),
    ]
    result = compute_custom_loss(
        inputs, lps, None, regularizers=regs, track_grad_norms=track_grad_norms
    )
    lp64 = [lp.astype(np.float64) for lp in lps]
    flat = np.concatenate(lp64)
    p = np.exp(flat)
    seq_means = [np.mean(-np.log1p(-np.exp(lp))) for lp in lp64]
    value_tok = np.sum(-np.log1p(-p))
    value_seq = np.mean(seq_means) + np.mean(np.log(-flat))
    np.testing.assert_allclose(result.regularizers["unlikely"].value, value_tok, rtol=1e-5)
    np.testing.assert_allclose(result.regularizers["unlikely_seq"].value, value_seq, rtol=1e-5)
    np.testing.assert_allclose(result.loss_total, value_tok + 0.5 * value_seq, rtol=1e-5)
    n_seq, n_tok = len(lps), flat.size
    for lp, grad in zip(lp64, result.gradients, strict=True):
        q = np.exp(lp) / (1.0 - np.exp(lp))  # d/dlp of -log(1 - e^lp)
        expected = q + 0.5 * (q / (n_seq * lp.size) + 1.0 / (lp * n_tok))
        assert np.isfinite(grad).all()
        np.testing.assert_allclose(grad, expected, rtol=1e-4)
