"""Term specs: validation that names the regularizer, and hashing on structure."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tinkjax.regularizers as R
from tinkjax.engine import EngineInputError, LossBatch, Regularizer


def nan_value(batch: LossBatch, lp: jax.Array, *, scale: jax.Array) -> jax.Array:
    return batch.token_sum(lp) * scale + jnp.log(scale - 1.0)


def test_spec_validation_errors_name_the_regularizer() -> None:
    with pytest.raises(EngineInputError, match="regularizer 'x': weight must be finite"):
        Regularizer("x", nan_value, weight=float("inf"))
    with pytest.raises(EngineInputError, match="regularizer 'x': weight must be a float"):
        Regularizer("x", nan_value, weight=True)
    with pytest.raises(EngineInputError, match="parameter 'scale' is not finite"):
        Regularizer("x", nan_value, params={"scale": np.nan})
    with pytest.raises(EngineInputError, match="unknown parameters"):
        Regularizer("x", nan_value, params={"scale": 1.0}).with_params(sclae=2.0)
    with pytest.raises(EngineInputError, match="reduction must be one of"):
        R.l1(weight=1.0, reduction="median")  # type: ignore[arg-type]


def test_specs_hash_on_structure_not_on_weights() -> None:
    a = R.l1(weight=1.0, center=0.0)
    b = R.l1(weight=5.0, center=-3.0)
    assert a == b
    assert hash(a) == hash(b)
    assert a != R.l1(weight=1.0, target="probs")
    assert a != R.l1(weight=1.0, name="other")
