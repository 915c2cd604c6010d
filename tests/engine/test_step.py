"""Planning and finishing a step: inputs the terms require, non-finite values and gradients."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tinkjax.regularizers as R
from tinkjax.engine import (
    EngineInputError,
    LossBatch,
    NonFiniteError,
    Regularizer,
    compute_custom_loss,
)

from .data import step_data


def log_of_neg_lp_at_datum_1(batch: LossBatch, lp: jax.Array) -> jax.Array:
    """sqrt(-lp) on datum 1 with one logprob set to 0: finite value, infinite gradient."""
    on_datum_1 = batch.segment_ids == 1
    return batch.token_sum(jnp.where(on_datum_1, jnp.sqrt(-lp), 0.0))


def nan_value(batch: LossBatch, lp: jax.Array, *, scale: jax.Array) -> jax.Array:
    return batch.token_sum(lp) * scale + jnp.log(scale - 1.0)


def test_non_finite_gradient_names_regularizer_and_datum() -> None:
    inputs, lps = step_data()
    lps[1][3] = 0.0
    regs = [R.l2(weight=1.0), Regularizer("sqrt", log_of_neg_lp_at_datum_1, weight=0.5)]
    events: list[tuple[str, dict[str, float], dict[str, Any]]] = []
    with pytest.raises(
        NonFiniteError, match=r"regularizer 'sqrt' has a non-finite gradient at datum 1"
    ) as info:
        compute_custom_loss(
            inputs, lps, "cross_entropy", regularizers=regs, emit=lambda *e: events.append(e)
        )
    assert (info.value.term, info.value.datum) == ("sqrt", 1)
    assert [e[0] for e in events] == ["custom_loss.start", "custom_loss.exception"]
    assert events[1][2]["term"] == "sqrt"
    assert events[1][2]["reason"] == "NonFiniteError"


def test_non_finite_value_names_regularizer() -> None:
    inputs, lps = step_data()
    reg = Regularizer("logscale", nan_value, weight=1.0, params={"scale": 0.5})
    with pytest.raises(
        NonFiniteError, match="regularizer 'logscale' has a non-finite value"
    ) as info:
        compute_custom_loss(inputs, lps, "cross_entropy", regularizers=[reg], track_grad_norms=True)
    assert info.value.datum is None
    ok = compute_custom_loss(
        inputs, lps, "cross_entropy", regularizers=[reg.with_params(scale=3.0)]
    )
    assert np.isfinite(ok.loss_total)


def test_missing_required_inputs_name_the_term() -> None:
    inputs, lps = step_data()
    with pytest.raises(
        EngineInputError, match=r"regularizer 'kl' requires loss inputs \['reference_logprobs'\]"
    ):
        compute_custom_loss(inputs, lps, None, regularizers=[R.kl(weight=1.0)])
    with pytest.raises(
        EngineInputError, match=r"base loss requires loss inputs \['logprobs', 'advantages'\]"
    ):
        compute_custom_loss(inputs, lps, "ppo")
