"""``create_custom_loss`` on the client: a clear error without torch, signature checks, and
handles that refuse another session's clients or data without their inputs (no torch)."""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import pytest

from tinkjax.client import LossHandle
from tinkjax.client._loss_handle import check_handle_data, trace_custom_loss
from tinkjax.types import CustomLossInput, Datum, ModelInput


def nll(logprobs: Any, weights: Any) -> Any:
    loss = -(logprobs * weights).sum()
    return loss, {"custom/nll:sum": loss}


def test_without_torch_the_error_says_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)
    monkeypatch.setitem(sys.modules, "torch.fx", None)
    with pytest.raises(ImportError, match="install torch"):
        trace_custom_loss(nll, {"logprobs": 1, "weights": 1})


@pytest.mark.parametrize(
    ("fn", "ranks", "named"),
    [
        (nll, {"logprobs": 1}, "input_ranks"),
        (nll, {"logprobs": 0, "weights": 1}, "logprobs"),
        (nll, {"logprobs": 1, "weights": 3}, "weights"),
        (lambda x, w: (x, {}), {"x": 1, "w": 1}, "logprobs"),
        (lambda logprobs, w=1: (logprobs, {}), {"logprobs": 1, "w": 1}, "default"),
    ],
)
def test_bad_signatures_are_refused_before_tracing(fn: Any, ranks: Any, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        trace_custom_loss(fn, ranks)


def _handle(session: str = "s-1") -> LossHandle:
    inputs = (CustomLossInput(name="logprobs", rank=1), CustomLossInput(name="weights", rank=1))
    return LossHandle(name="nll", inputs=inputs, session_id=session, loss_id="loss-1")


def _datum(**inputs: Any) -> Datum:
    return Datum(model_input=ModelInput.from_ints([1, 2, 3]), loss_fn_inputs=inputs)


def test_handle_checks_session_and_inputs() -> None:
    good = _datum(target_tokens=np.array([2, 3, 4]), weights=np.ones(3, np.float32))
    check_handle_data(_handle(), [good], "s-1")
    with pytest.raises(ValueError, match="session"):
        check_handle_data(_handle("s-2"), [good], "s-1")
    with pytest.raises(ValueError, match=r"data\[0\].*weights"):
        check_handle_data(_handle(), [_datum(target_tokens=np.array([2, 3, 4]))], "s-1")
    flat = _datum(target_tokens=np.array([2, 3, 4]), weights=np.ones((3, 1), np.float32))
    with pytest.raises(ValueError, match="rank 2"):
        check_handle_data(_handle(), [flat], "s-1")
