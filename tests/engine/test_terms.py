"""Evaluating a term inside the program: what a term function may return."""

from __future__ import annotations

import pytest

from tinkjax.engine import EngineInputError, PackedLoss, compute_custom_loss

from .data import step_data


def test_a_non_scalar_term_value_is_rejected() -> None:
    inputs, lps = step_data()
    with pytest.raises(EngineInputError, match="must be a scalar, got shape"):
        compute_custom_loss(inputs, lps, PackedLoss(lambda batch, lp: lp))
