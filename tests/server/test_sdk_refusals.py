"""Refused requests through the official ``tinker`` SDK: the next request is not stalled, and
numerical poison is refused without touching the model.

The server here gives up a gap after 2 s: on a server that did not count a refused request's
``seq_id`` as used, the request after a refusal would fail ("never arrived") instead of running.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator

import numpy as np
import pytest

from tinkjax.server import ServerHandle, start

from .conftest import MICRO

tinker = pytest.importorskip("tinker")
types = tinker.types

TOKENS = list(b"refusals must not stall the client")


def _datum(tokens: list[int], weight: float = 1.0) -> object:
    return types.Datum(
        model_input=types.ModelInput.from_ints(tokens[:-1]),
        loss_fn_inputs={"target_tokens": tokens[1:], "weights": [weight] * (len(tokens) - 1)},
    )


@pytest.fixture(scope="module")
def quick_gap_server() -> Iterator[ServerHandle]:
    with start(seq_gap_timeout_s=2.0, long_poll_s=2.0, models=[MICRO]) as handle:
        yield handle


@pytest.fixture(scope="module")
def service(quick_gap_server: ServerHandle) -> Iterator[object]:
    keys = ("TINKER_BASE_URL", "TINKER_API_KEY", "TINKER_TELEMETRY")
    old = {k: os.environ.get(k) for k in keys}
    os.environ.update(
        TINKER_BASE_URL=quick_gap_server.base_url, TINKER_API_KEY="tml-test", TINKER_TELEMETRY="0"
    )
    try:
        with tinker.ServiceClient() as client:
            yield client
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module")
def tc(service: object) -> object:
    """One training client for the module (creating one through the SDK takes seconds)."""
    return service.create_lora_training_client(base_model=MICRO, rank=4).result()  # type: ignore[attr-defined]


def _greedy_logprobs(tc: object) -> np.ndarray:
    out = tc.forward([_datum(TOKENS)], "cross_entropy").result()  # type: ignore[attr-defined]
    return np.asarray(out.loss_fn_outputs[0]["logprobs"].to_numpy())


def test_rejected_submission_does_not_block_later_calls(tc: object) -> None:
    with pytest.raises(tinker.BadRequestError, match="loss_fn"):
        tc.forward_backward([_datum(TOKENS)], "no_such_loss").result()
    # Mismatched loss inputs: importance_sampling needs logprobs and advantages.
    with pytest.raises(tinker.BadRequestError):
        tc.forward_backward([_datum(TOKENS)], "importance_sampling").result()
    fb = tc.forward_backward([_datum(TOKENS)], "cross_entropy").result()
    assert math.isfinite(fb.metrics["loss:sum"])
    opt = tc.optim_step(types.AdamParams(learning_rate=1e-3)).result()
    assert opt.metrics["grad_norm:mean"] > 0


def test_sdk_nan_learning_rate_is_named_and_changes_nothing(tc: object) -> None:
    before = _greedy_logprobs(tc)
    tc.forward_backward([_datum(TOKENS)], "cross_entropy").result()
    with pytest.raises(tinker.BadRequestError) as caught:
        tc.optim_step(types.AdamParams(learning_rate=float("nan"))).result()
    message = str(caught.value)
    assert "learning_rate" in message
    assert "finite" in message
    assert "Expected `float`" not in message
    np.testing.assert_array_equal(_greedy_logprobs(tc), before)
    # The client is not stalled: the pending gradient is still there for a proper step.
    opt = tc.optim_step(types.AdamParams(learning_rate=1e-2)).result()
    assert opt.metrics["grad_norm:mean"] > 0
    assert not np.array_equal(_greedy_logprobs(tc), before)


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"eps": 0.0}, "eps"),
        ({"learning_rate": 1e30}, "learning_rate"),
        ({"weight_decay": 1e30}, "weight_decay"),
    ],
)
def test_sdk_poisonous_hyperparameters_are_refused(
    tc: object, params: dict[str, float], field: str
) -> None:
    before = _greedy_logprobs(tc)
    with pytest.raises(tinker.BadRequestError, match=f"adam_params.{field}"):
        tc.optim_step(types.AdamParams(**params)).result()
    after = _greedy_logprobs(tc)
    assert np.isfinite(after).all()
    np.testing.assert_array_equal(after, before)


def test_sdk_overflowing_weights_are_refused_not_sent_as_null(tc: object) -> None:
    before = _greedy_logprobs(tc)
    huge = _datum(TOKENS, weight=3e38)
    with pytest.raises(tinker.RequestFailedError, match="non-finite"):
        tc.forward_backward([huge, _datum(TOKENS, weight=3e38)], "cross_entropy").result()
    np.testing.assert_array_equal(_greedy_logprobs(tc), before)
    # Nothing was accumulated: a step now sees no gradient (and its answer parses).
    opt = tc.optim_step(types.AdamParams(learning_rate=1e-2)).result()
    assert opt.metrics["grad_norm:mean"] == 0.0
