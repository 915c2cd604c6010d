"""with_retry / RetryHandler (delays, which errors retry, events) and capture_exceptions (reports,
re-raises; context manager and decorator, sync and async)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from tinkjax import events
from tinkjax.client import (
    RetryHandler,
    ServiceClient,
    TelemetryReporter,
    capture_exceptions,
    with_retry,
    with_retry_async,
)
from tinkjax.client import _telemetry_retry as retry_mod
from tinkjax.errors import APIConnectionError, BadRequestError, InternalServerError

from .conftest import API_KEY


@pytest.fixture
def retry_events() -> Iterator[list[tuple[str, dict[str, Any], dict[str, Any]]]]:
    seen: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
    names = ["tinkjax.retry.start", "tinkjax.retry.attempt", "tinkjax.retry.stop"]
    names.append("tinkjax.retry.failed")
    events.attach("test.retry", names, lambda n, m, md: seen.append((n[-1], dict(m), dict(md))))
    yield seen
    events.detach("test.retry")


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    slept: list[float] = []
    monkeypatch.setattr(retry_mod.time, "sleep", slept.append)
    return slept


def flaky(failures: list[BaseException], value: str = "ok") -> Any:
    def fn() -> str:
        if failures:
            raise failures.pop(0)
        return value

    return fn


def test_retries_then_returns_with_exponential_delays_and_events(
    retry_events: list[Any], sleeps: list[float]
) -> None:
    errors: list[BaseException] = [APIConnectionError("down")] * 3
    handler = RetryHandler(max_retries=5, base_delay=0.1, max_delay=0.3, jitter=0.0, name="op")
    assert with_retry(flaky(errors), handler, metadata={"run": "r1"}) == "ok"
    assert sleeps == pytest.approx([0.1, 0.2, 0.3])  # doubling, capped
    kinds = [k for k, _, _ in retry_events]
    assert kinds == ["start", "attempt", "attempt", "attempt", "stop"]
    assert [m["attempt"] for k, m, _ in retry_events if k == "attempt"] == [1, 2, 3]
    assert all(md["name"] == "op" and md["run"] == "r1" for _, _, md in retry_events)
    assert retry_events[-1][1]["attempts"] == 4


def test_jitter_keeps_each_delay_within_its_band(sleeps: list[float]) -> None:
    handler = RetryHandler(max_retries=20, base_delay=0.01, max_delay=1.0, jitter=0.5)
    with_retry(flaky([APIConnectionError("x")] * 20), handler)
    for n, delay in enumerate(sleeps):
        raw = min(0.01 * 2**n, 1.0)
        assert 0.5 * raw <= delay <= raw


def test_a_non_retryable_error_is_raised_at_once(
    retry_events: list[Any], sleeps: list[float]
) -> None:
    err = BadRequestError("bad", status_code=400)
    with pytest.raises(BadRequestError):
        with_retry(flaky([err]), RetryHandler(max_retries=5))
    assert sleeps == []
    assert retry_events[-1][0] == "failed"
    assert retry_events[-1][2]["reason"] == "not_retryable"


def test_giving_up_after_max_retries_raises_the_last_error(
    retry_events: list[Any], sleeps: list[float]
) -> None:
    errors: list[BaseException] = [InternalServerError(f"e{i}", status_code=503) for i in range(5)]
    with pytest.raises(InternalServerError, match="e2"):
        with_retry(flaky(errors), RetryHandler(max_retries=2, base_delay=0.01))
    assert len(sleeps) == 2
    assert retry_events[-1][2]["reason"] == "max_retries"
    assert retry_events[-1][1]["attempts"] == 3


def test_retry_on_types_or_predicate_and_the_servers_hint(sleeps: list[float]) -> None:
    by_type = RetryHandler(retry_on=(KeyError,), base_delay=0.01, jitter=0.0)
    assert with_retry(flaky([KeyError("k")]), by_type) == "ok"
    with pytest.raises(APIConnectionError):  # not in the tuple
        with_retry(flaky([APIConnectionError("c")]), by_type)
    by_predicate = RetryHandler(retry_on=lambda e: "again" in str(e), base_delay=0.01)
    assert with_retry(flaky([RuntimeError("try again")]), by_predicate) == "ok"
    hinted = InternalServerError("busy", status_code=503)
    hinted.retry_after = 2.5  # type: ignore[attr-defined]
    sleeps.clear()
    with_retry(flaky([hinted]), RetryHandler(base_delay=0.01))
    assert sleeps == [2.5]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_retries": -1}, "max_retries"),
        ({"base_delay": -0.1}, "base_delay"),
        ({"base_delay": 2.0, "max_delay": 1.0}, "max_delay"),
        ({"jitter": 1.5}, "jitter"),
        ({"retry_on": 3}, "retry_on"),
    ],
)
def test_bad_handler_settings_are_refused_naming_the_field(
    kwargs: dict[str, Any], field: str
) -> None:
    with pytest.raises(ValueError, match=field):
        RetryHandler(**kwargs)


def test_the_async_twin_retries_with_asyncio_sleep(
    retry_events: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    slept: list[float] = []

    async def fake_sleep(delay: float) -> None:
        slept.append(delay)

    monkeypatch.setattr(retry_mod.asyncio, "sleep", fake_sleep)
    failures: list[BaseException] = [APIConnectionError("a"), APIConnectionError("b")]

    async def call() -> int:
        if failures:
            raise failures.pop(0)
        return 7

    handler = RetryHandler(base_delay=0.05, jitter=0.0)
    assert asyncio.run(with_retry_async(call, handler)) == 7
    assert slept == pytest.approx([0.05, 0.1])
    assert [k for k, _, _ in retry_events] == ["start", "attempt", "attempt", "stop"]


# ---------------------------------------------------------------- capture_exceptions
@pytest.fixture
def reporter(local_server: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[TelemetryReporter]:
    monkeypatch.setenv("TINKER_TELEMETRY", "1")
    sc = ServiceClient(base_url=local_server.base_url, api_key=API_KEY, heartbeat_interval=0)
    rep = sc.telemetry_reporter
    assert rep is not None
    yield rep
    sc.close()


def queued(rep: TelemetryReporter) -> list[str]:
    return [
        getattr(e, "error_message", None) or getattr(e, "event_name", "") for e in rep.pending()
    ]


def test_capture_as_context_manager_reports_and_reraises(reporter: TelemetryReporter) -> None:
    with pytest.raises(RuntimeError, match="in block"), capture_exceptions(reporter):
        raise RuntimeError("in block")
    assert "in block" in queued(reporter)
    with capture_exceptions(reporter):
        pass  # nothing to report
    assert queued(reporter).count("in block") == 1


def test_capture_as_decorator_finds_the_reporter_of_self(reporter: TelemetryReporter) -> None:
    class Job:
        def get_telemetry(self) -> TelemetryReporter:
            return reporter

        @capture_exceptions
        def run(self) -> None:
            raise ValueError("method failed")

        @capture_exceptions(severity="CRITICAL")
        async def arun(self) -> None:
            raise ValueError("async method failed")

    with pytest.raises(ValueError, match="method failed"):
        Job().run()
    with pytest.raises(ValueError, match="async method failed"):
        asyncio.run(Job().arun())
    got = queued(reporter)
    assert "method failed" in got
    assert "async method failed" in got
    crit = [
        e for e in reporter.pending() if getattr(e, "error_message", "") == "async method failed"
    ]
    assert crit[0].severity == "CRITICAL"


def test_fatal_capture_ends_the_session_and_flushes(
    reporter: TelemetryReporter, local_server: Any
) -> None:
    @capture_exceptions(reporter, fatal=True)
    def main() -> None:
        raise KeyError("fatal one")

    with pytest.raises(KeyError):
        main()
    assert reporter.queued == 0  # flushed synchronously before the exception propagated
    from .test_telemetry import backend_events

    got = backend_events(local_server, reporter.session_id or "")
    assert [e["event"] for e in got][-2:] == ["UNHANDLED_EXCEPTION", "SESSION_END"]


def test_async_capture_context_and_no_reporter(reporter: TelemetryReporter) -> None:
    async def body() -> None:
        async with capture_exceptions(reporter):
            raise OSError("async block")

    with pytest.raises(OSError, match="async block"):
        asyncio.run(body())
    assert "async block" in queued(reporter)

    @capture_exceptions
    def plain() -> None:  # no self with a reporter, none given: re-raised unreported
        raise LookupError("nobody listens")

    with pytest.raises(LookupError):
        plain()
    with pytest.raises(TypeError, match="get_telemetry"):
        capture_exceptions(42)
