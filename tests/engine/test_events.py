"""The events of a step: one ``regularizer.compute`` each, and handlers that raise."""

from __future__ import annotations

from typing import Any

import pytest

import tinkjax.regularizers as R
from tinkjax.engine import compute_custom_loss

from .data import step_data


def test_events_report_each_regularizer() -> None:
    inputs, lps = step_data()
    events: list[tuple[str, dict[str, float], dict[str, Any]]] = []

    def broken(name: str, measurements: dict[str, float], metadata: dict[str, Any]) -> None:
        events.append((name, measurements, metadata))
        raise RuntimeError("handler bug")  # logged, never raised into the step

    result = compute_custom_loss(
        inputs,
        lps,
        "cross_entropy",
        track_grad_norms=True,
        regularizers=[R.l1(weight=0.5), R.entropy(weight=-1.0)],
        emit=broken,
    )
    names = [e[0] for e in events]
    assert names == [
        "custom_loss.start",
        "regularizer.compute",
        "regularizer.compute",
        "custom_loss.stop",
    ]
    l1_event = events[1]
    assert l1_event[2] == {"regularizer_name": "l1", "weight": 0.5}
    assert l1_event[1]["contribution"] == pytest.approx(result.regularizers["l1"].contribution)
    assert l1_event[1]["grad_norm"] == result.regularizers["l1"].grad_norm
    assert events[3][1]["loss_total"] == result.loss_total
    assert events[0][2] == {"regularizer_count": 2, "track_grad_norms": True}
