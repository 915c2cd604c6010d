"""How long a future is polled: errors in a row are bounded by ``poll_error_timeout``
(``TINKJAX_POLL_ERROR_TIMEOUT``), ``try_again`` answers are not errors, and every timeout
names the request it waited on."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tinkjax.client import ServiceClient, TrainingClient, resolve_config
from tinkjax.errors import ConfigurationError, FutureTimeoutError
from tinkjax.types import AdamParams

from .conftest import API_KEY
from .fake import FakeTinker

pytestmark = pytest.mark.timeout(60)

ERROR_TIMEOUT_S = 0.4


@pytest.fixture
def impatient(fake: FakeTinker, monkeypatch: pytest.MonkeyPatch) -> Iterator[ServiceClient]:
    """A client polling through errors for ``ERROR_TIMEOUT_S`` (set in the environment)."""
    monkeypatch.setenv("TINKJAX_POLL_ERROR_TIMEOUT", str(ERROR_TIMEOUT_S))
    sc = ServiceClient(
        base_url="http://fake.test",
        api_key=API_KEY,
        http_transport=fake.transport(),
        heartbeat_interval=0,
    )
    assert sc.config.poll_error_timeout == ERROR_TIMEOUT_S
    yield sc
    sc.close()


def _training(sc: ServiceClient) -> TrainingClient:
    return sc.create_lora_training_client("tinkjax/bytelm-micro").result(timeout=30)


@pytest.mark.parametrize(
    ("fault", "last_error"),
    [
        ({"status": 429, "body": b'{"detail": "slow down"}'}, "HTTP 429"),
        ({"status": 503, "body": b'{"detail": "overloaded"}'}, "HTTP 503"),
        ({"drop": True}, "APIConnectionError"),
        ({"hang": True}, "APITimeoutError"),  # the server never answers
    ],
    ids=["429", "503", "refused", "no-answer"],
)
def test_errors_in_a_row_end_the_wait_naming_request_duration_and_last_error(
    impatient: ServiceClient, fake: FakeTinker, fault: dict[str, Any], last_error: str
) -> None:
    tc = _training(impatient)
    fake.fault(r"/retrieve_future$", times=10**6, **fault)
    future = tc.optim_step(AdamParams(learning_rate=1e-3))
    with pytest.raises(FutureTimeoutError) as info:
        future.result(timeout=30)  # the bound, not this timeout, ends the wait
    err = info.value
    assert isinstance(err, TimeoutError)
    assert err.request_type == "OptimStep"
    assert err.request_id is not None
    assert err.request_id.startswith("req-")
    assert err.waited_s is not None
    assert ERROR_TIMEOUT_S <= err.waited_s < 10
    assert err.last_error is not None
    assert last_error in err.last_error
    message = str(err)
    for part in (f"OptimStep request {err.request_id}", f"{ERROR_TIMEOUT_S} s", last_error):
        assert part in message
    assert API_KEY not in message


def test_try_again_answers_are_pending_not_errors(
    impatient: ServiceClient, fake: FakeTinker
) -> None:
    tc = _training(impatient)
    fake.pending_polls = 10**6  # every poll answers 408 try_again
    future = tc.optim_step(AdamParams(learning_rate=1e-3))
    with pytest.raises(FutureTimeoutError) as info:
        future.result(timeout=4 * ERROR_TIMEOUT_S)
    assert not future.done()  # still polling: well past the error bound, and still pending
    err = info.value
    assert isinstance(err, TimeoutError)
    assert err.request_type == "OptimStep"
    assert err.request_id is not None
    assert f"OptimStep request {err.request_id}" in str(err)
    assert f"timeout={4 * ERROR_TIMEOUT_S}" in str(err)

    async def wait() -> None:
        await future.result_async(timeout=0.05)

    with pytest.raises(FutureTimeoutError, match=f"OptimStep request {err.request_id}"):
        asyncio.run(wait())
    fake.futures[err.request_id].pending = 0
    assert future.result(timeout=30).metrics is not None


def test_an_answer_between_errors_starts_the_count_again(
    fake: FakeTinker, monkeypatch: pytest.MonkeyPatch
) -> None:
    # three runs of 503s, each shorter than the bound but longer together, split by try_again
    script = iter([503, 503, 408, 503, 503, 408, 503, 503, 408])
    answers: list[int] = []

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/v1/retrieve_future":
            status = next(script, None)
            if status is not None:
                answers.append(status)
                rid = json.loads(request.content)["request_id"]
                body = {"type": "try_again", "request_id": rid, "queue_state": "active"}
                return httpx.Response(status, json=body if status == 408 else {"detail": "x"})
        return fake.handle(request)

    monkeypatch.setenv("TINKJAX_POLL_ERROR_TIMEOUT", str(ERROR_TIMEOUT_S))
    with ServiceClient(
        base_url="http://fake.test",
        api_key=API_KEY,
        http_transport=httpx.MockTransport(handle),
        heartbeat_interval=0,
    ) as sc:
        tc = _training(sc)  # its create_model poll runs the script
        assert tc.optim_step(AdamParams(learning_rate=1e-3)).result(timeout=30).metrics
    assert answers == [503, 503, 408] * 3


def test_a_future_not_yet_acknowledged_says_so(impatient: ServiceClient, fake: FakeTinker) -> None:
    tc = _training(impatient)
    fake.fault(r"/optim_step$", hang=True, times=10**6)
    with pytest.raises(FutureTimeoutError, match="no request of it was acknowledged yet"):
        tc.optim_step(AdamParams(learning_rate=1e-3)).result(timeout=0.2)


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "soon"])
def test_poll_error_timeout_must_be_positive_seconds(value: str) -> None:
    with pytest.raises(ConfigurationError, match=r"POLL_ERROR_TIMEOUT|poll_error_timeout"):
        resolve_config(base_url="http://127.0.0.1:1", environ={"TINKJAX_POLL_ERROR_TIMEOUT": value})
    assert resolve_config(base_url="http://127.0.0.1:1", environ={}).poll_error_timeout == 300
    assert (
        resolve_config(
            base_url="http://127.0.0.1:1",
            poll_error_timeout=7,
            environ={"TINKJAX_POLL_ERROR_TIMEOUT": "9"},
        ).poll_error_timeout
        == 7
    )
