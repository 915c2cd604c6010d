"""Transport, futures and sampling under injected faults (canned service, no sockets)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tinkjax import events
from tinkjax.client import ServiceClient, TrainingClient, limiter_for
from tinkjax.errors import (
    APIConnectionError,
    APIResponseValidationError,
    APITimeoutError,
    BadRequestError,
    DecodeError,
    FutureExpiredError,
    InternalServerError,
    NotFoundError,
    RateLimitError,
    RequestFailedError,
)
from tinkjax.types import AdamParams, ModelInput, SamplingParams

from .conftest import API_KEY
from .fake import FakeTinker
from .test_training import datum

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Shrink every backoff so fault tests run in milliseconds (the schedule is unit-tested)."""
    from tinkjax.client import _backoff

    real = _backoff.backoff_delay

    def quick(attempt: int, **kw: Any) -> float:
        return real(attempt, **kw) / 100.0

    monkeypatch.setattr(_backoff, "backoff_delay", quick)


@pytest.fixture
def recorded() -> Iterator[list[tuple[tuple[str, ...], dict[str, Any], dict[str, Any]]]]:
    seen: list[tuple[tuple[str, ...], dict[str, Any], dict[str, Any]]] = []
    events.attach(
        "test-recorder",
        [
            ("tinkjax", "request", "start"),
            "tinkjax.request.stop",
            "tinkjax.request.exception",
            "tinkjax.future.queue_state",
        ],
        lambda n, m, md: seen.append((n, dict(m), dict(md))),
    )
    yield seen
    events.detach("test-recorder")


def training(service: ServiceClient) -> TrainingClient:
    return service.create_lora_training_client("tinkjax/bytelm-micro").result(timeout=30)


def test_5xx_and_resets_are_retried_with_one_idempotency_key(
    service: ServiceClient, fake: FakeTinker, recorded: list[Any]
) -> None:
    tc = training(service)
    fake.fault(r"/forward_backward$", status=503, times=2)
    fake.fault(r"/forward_backward$", drop=True, times=1)
    with events.telemetry_metadata(run="r1", step=7):
        fut = tc.forward_backward([datum(3)], "cross_entropy")
    out = fut.result(timeout=30)
    assert out.metrics["loss:sum"] == 3.0
    posts = [r for r in fake.requests if r.url.path == "/api/v1/forward_backward"]
    assert len(posts) == 4
    assert len({r.headers["x-idempotency-key"] for r in posts}) == 1
    assert [r.headers["x-tinkjax-retry-count"] for r in posts] == ["0", "1", "2", "3"]
    stops = [md for n, _, md in recorded if n[-1] == "stop" and md["path"].endswith("backward")]
    assert [md["status"] for md in stops] == [503, 503, 200]
    assert stops[-1]["model_id"] == tc.model_id
    assert stops[-1]["session_id"] == "sess-1"
    assert stops[-1]["telemetry_metadata"] == {"run": "r1", "step": 7}
    assert stops[-1]["retry_count"] == 3
    assert any(n[-1] == "exception" for n, _, _ in recorded)


def test_applied_then_failed_request_is_not_applied_twice(
    service: ServiceClient, fake: FakeTinker
) -> None:
    tc = training(service)
    fake.fault(r"/optim_step$", after=True, status=502, times=2)
    fake.fault(r"/forward_backward$", after=True, status=500, times=1)
    f = tc.forward_backward([datum(2)], "cross_entropy")
    o = tc.optim_step(AdamParams())
    f.result(timeout=30)
    o.result(timeout=30)
    assert dict(fake.applied) == {(tc.model_id, 1): 1, (tc.model_id, 2): 1}
    seqs = [r for r in fake.requests if r.url.path == "/api/v1/optim_step"]
    assert len(seqs) == 3  # resent with the same seq_id, deduplicated by the server


def test_should_retry_header_and_retry_after(service: ServiceClient, fake: FakeTinker) -> None:
    tc = training(service)
    fake.fault(r"/optim_step$", status=503, headers={"x-should-retry": "false"})
    with pytest.raises(InternalServerError, match="503"):
        tc.optim_step(AdamParams()).result(timeout=30)
    fake.fault(r"/get_info$", status=418, headers={"x-should-retry": "true", "retry-after": "0.01"})
    assert tc.get_info().model_id == tc.model_id


def test_4xx_maps_to_exception_tree_without_leaking_key(
    service: ServiceClient, fake: FakeTinker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    tc = training(service)
    fake.fault(r"/optim_step$", status=400, body=f'{{"detail": "bad key {API_KEY}"}}'.encode())
    with pytest.raises(BadRequestError) as info:
        tc.optim_step(AdamParams()).result(timeout=30)
    assert info.value.status_code == 400
    assert API_KEY not in str(info.value)
    assert "***" in str(info.value)
    assert API_KEY not in repr(service) + repr(service.config) + repr(tc)
    fake.fault(r"/get_info$", status=404)
    with pytest.raises(NotFoundError):
        tc.get_info()
    assert API_KEY not in caplog.text


def test_connection_errors_exhaust_into_apiconnectionerror(fake: FakeTinker) -> None:
    sc = ServiceClient(
        base_url="http://fake.test",
        api_key=API_KEY,
        max_retries=2,
        http_transport=fake.transport(),
        heartbeat_interval=0,
    )
    try:
        tc = training(sc)
        fake.fault(r"/save_weights$", hang=True, times=3)
        with pytest.raises(APITimeoutError):
            tc.save_state("x").result(timeout=30)
        # The lost seq_id 1 was filled with a forward-only no-op: later calls go through.
        assert tc.optim_step(AdamParams()).result(timeout=30).metrics is not None
        assert sorted(fake.applied) == [(tc.model_id, 1), (tc.model_id, 2)]
        # When even the filler cannot be delivered, the client refuses later calls.
        fake.fault(r"/save_weights$", drop=True, times=3)
        fake.fault(r"/forward_backward$", drop=True, times=3)
        with pytest.raises(APIConnectionError):
            tc.save_state("y").result(timeout=30)
        with pytest.raises(APIConnectionError, match="never delivered"):
            tc.optim_step(AdamParams()).result(timeout=30)
    finally:
        sc.close()


def test_rejected_submission_does_not_block_later_calls(
    service: ServiceClient, fake: FakeTinker
) -> None:
    tc = training(service)
    fake.fault(r"/optim_step$", status=400, body=b'{"detail": "bad learning rate"}')
    bad = tc.optim_step(AdamParams())
    good = tc.forward([datum(2)], "cross_entropy")
    with pytest.raises(BadRequestError, match="bad learning rate"):
        bad.result(timeout=30)
    assert good.result(timeout=30).metrics["loss:sum"] == 2.0
    assert sorted(fake.applied) == [(tc.model_id, 1), (tc.model_id, 2)]


def test_poll_loop_status_table(
    service: ServiceClient, fake: FakeTinker, recorded: list[Any]
) -> None:
    fake.pending_polls = 3
    tc = training(service)  # create_model answered 408 try_again three times first
    states = [md["queue_state"] for n, _, md in recorded if n[1] == "future"]
    assert states
    assert states[0] == "paused_capacity"
    fake.pending_polls = 0
    fake.fault(r"/retrieve_future$", status=500, times=2)
    fake.fault(r"/retrieve_future$", status=429, headers={"retry-after": "0.01"}, times=1)
    fake.fault(r"/retrieve_future$", drop=True, times=1)
    assert tc.forward([datum(2)], "cross_entropy").result(timeout=30).metrics["loss:sum"] == 2.0
    # A failed request surfaces its category.
    fake.fault(r"/retrieve_future$", status=200, body=b'{"error": "bad datum", "category": "user"}')
    with pytest.raises(RequestFailedError) as failed:
        tc.optim_step(AdamParams()).result(timeout=30)
    assert failed.value.category == "user"
    fake.fault(r"/retrieve_future$", status=410, body=b'{"detail": "expired"}')
    with pytest.raises(FutureExpiredError):
        tc.optim_step(AdamParams()).result(timeout=30)
    fake.fault(r"/retrieve_future$", malformed=True)
    with pytest.raises(DecodeError):
        tc.optim_step(AdamParams()).result(timeout=30)
    fake.fault(r"/retrieve_future$", status=400, times=4)
    with pytest.raises(BadRequestError):
        tc.optim_step(AdamParams()).result(timeout=30)


def test_malformed_submission_answer(service: ServiceClient, fake: FakeTinker) -> None:
    tc = training(service)
    fake.fault(r"/optim_step$", malformed=True)
    with pytest.raises(APIResponseValidationError):
        tc.optim_step(AdamParams()).result(timeout=30)


def test_overall_poll_timeout(service: ServiceClient, fake: FakeTinker) -> None:
    from tinkjax.client._loop import submit
    from tinkjax.client._polling import poll_future
    from tinkjax.types import OptimStepResponse

    fake.pending_polls = 10**6
    ack = fake._future({"metrics": {}})
    coro = poll_future(
        service.transport,
        ack["request_id"],
        OptimStepResponse,
        wire=service.session.wire,
        request_type="OptimStep",
        timeout=0.3,
    )
    with pytest.raises(APITimeoutError, match="did not resolve"):
        submit(coro).result(timeout=30)


def test_sampling_fan_out_and_429_storm(service: ServiceClient, fake: FakeTinker) -> None:
    sc = service.create_sampling_client(base_model="tinkjax/bytelm-micro").result(timeout=30)
    prompt = ModelInput.from_ints([5, 6, 7])
    fake.fault(r"/asample$", status=429, headers={"retry-after": "0.05"}, times=20)
    fake.fault(r"/asample$", status=503, times=3)
    fake.fault(r"/retrieve_future$", status=410, times=2)
    futs = [sc.sample(prompt, 2, SamplingParams(max_tokens=3)) for _ in range(60)]
    results = [f.result(timeout=30) for f in futs]
    assert all(len(r.sequences) == 2 for r in results)
    ids = {s.sequence_id for r in results for s in r.sequences}
    assert len(ids) == 120
    assert None not in ids
    # The sampling path sends no HTTP-level retries: one request per attempt.
    assert all(
        r.headers["x-tinkjax-retry-count"] == "0"
        for r in fake.requests
        if r.url.path == "/api/v1/asample"
    )
    lps = sc.compute_logprobs(prompt).result(timeout=30)
    assert lps[0] is None
    assert lps[1:] == [-1.0, -1.0]


def test_429_window_is_per_tenant(fake: FakeTinker) -> None:
    key_a, key_b = "tml-tenant-a-key", "tml-tenant-b-key"
    clients = [
        ServiceClient(
            base_url="http://fake.test",
            api_key=k,
            http_transport=fake.transport(),
            heartbeat_interval=0,
        )
        for k in (key_a, key_b)
    ]
    try:
        sa, sb = (c.create_sampling_client(base_model="m").result(timeout=30) for c in clients)
        lim_a = limiter_for("http://fake.test", key_a)
        lim_b = limiter_for("http://fake.test", key_b)
        fake.fault(r"/asample$", status=429, headers={"retry-after": "30"}, api_key=key_a)
        prompt = ModelInput.from_ints([1, 2])
        fa = sa.sample(prompt, 1, SamplingParams())
        deadline = time.monotonic() + 10
        while lim_a.blocked_for == 0 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert lim_a.blocked_for > 0
        rb = sb.sample(prompt, 1, SamplingParams()).result(timeout=10)
        assert rb.sequences
        assert lim_b.blocked_for == 0
        assert lim_a.blocked_for > 0
        assert not fa.done()
        lim_a.clear_window()  # end A's window early; its request then goes through
        assert fa.result(timeout=10).sequences
    finally:
        for c in clients:
            c.close()


def test_rate_limit_waits_are_bounded(fake: FakeTinker) -> None:
    from tinkjax.client import SamplingRetryConfig

    sc = ServiceClient(
        base_url="http://fake.test",
        api_key="tml-bounded",
        http_transport=fake.transport(),
        heartbeat_interval=0,
    )
    try:
        samp = sc.create_sampling_client(
            base_model="m", retry_config=SamplingRetryConfig(max_rate_limit_waits=2)
        ).result(timeout=30)
        fake.fault(r"/asample$", status=429, headers={"retry-after": "0.01"}, times=10)
        with pytest.raises(RateLimitError):
            samp.sample(ModelInput.from_ints([1]), 1, SamplingParams()).result(timeout=30)
    finally:
        sc.close()
