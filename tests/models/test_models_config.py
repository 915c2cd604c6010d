"""Presets and the deterministic base weights."""

from __future__ import annotations

import numpy as np
import pytest

from tinkjax.models import DEFAULT_MODEL, PRESETS, ModelConfig, ModelRuntime, get_model_config


def test_presets() -> None:
    assert DEFAULT_MODEL == "tinkjax/bytelm-1m"
    cfg = PRESETS[DEFAULT_MODEL]
    n = (
        cfg.n_layers * (4 * cfg.d_model**2 + 3 * cfg.d_model * cfg.d_ff)
        + 2 * cfg.vocab_size * cfg.d_model
    )
    assert 0.8e6 < n < 1.2e6
    assert get_model_config("tinkjax/bytelm-micro").d_model == 32
    with pytest.raises(ValueError, match="unknown model 'x'"):
        get_model_config("x")
    with pytest.raises(ValueError, match="divisible"):
        ModelConfig(vocab_size=10, d_model=30, n_layers=1, n_heads=4, d_ff=8, max_seq_len=8)


def test_base_weights_are_deterministic(runtime: ModelRuntime) -> None:
    again = ModelRuntime("tinkjax/bytelm-micro").base_params
    for key, value in runtime.base_params.items():
        np.testing.assert_array_equal(value, again[key])
    assert runtime.base_params["q"].shape == (2, 32, 32)
