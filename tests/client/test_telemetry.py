"""The telemetry reporter against the real local backend: what reaches it, in which order, across
injected faults; draining, fatal exceptions, the kill switch; what an unreachable backend costs."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tinkjax import events
from tinkjax.client import ServiceClient, TelemetryReporter
from tinkjax.errors import BadRequestError
from tinkjax.server import FaultRule

from .conftest import API_KEY


def backend_events(server: Any, session_id: str, key: str = API_KEY) -> list[dict[str, Any]]:
    resp = httpx.get(
        f"{server.base_url}/api/v1/telemetry/events",
        params={"session_id": session_id, "limit": 1000},
        headers={"X-API-Key": key},
    )
    resp.raise_for_status()
    events_: list[dict[str, Any]] = resp.json()["events"]
    return events_


@pytest.fixture
def quiet_service(local_server: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[ServiceClient]:
    """A ServiceClient without its own reporter (tests make theirs with fast settings)."""
    monkeypatch.setenv("TINKER_TELEMETRY", "0")
    local_server.faults.clear()
    sc = ServiceClient(base_url=local_server.base_url, api_key=API_KEY, heartbeat_interval=0)
    sc.session_id  # noqa: B018 - the session exists before the test starts
    yield sc
    local_server.faults.clear()
    sc.close()


def fast_reporter(sc: ServiceClient, **kw: Any) -> TelemetryReporter:
    opts: dict[str, Any] = {
        "flush_interval": 0.05,
        "retry_base_delay": 0.01,
        "retry_max_delay": 0.05,
        "forward_events": False,
    }
    opts.update(kw)
    return TelemetryReporter(sc.transport, sc.session, **opts)


def names(evs: list[dict[str, Any]]) -> list[str]:
    return [e.get("event_name") or e["event"] for e in evs]


@pytest.mark.parametrize("after", [False, True], ids=["refused", "applied-then-503"])
def test_events_reach_the_backend_in_order_with_nothing_lost_across_503s(
    local_server: Any, quiet_service: ServiceClient, after: bool
) -> None:
    rule = FaultRule(path="/api/v1/telemetry$", status=503, times=4, after=after)
    local_server.faults.rules.append(rule)
    rep = fast_reporter(quiet_service, max_batch_size=7, max_retries=1)
    for i in range(40):
        assert rep.log(f"step.{i}", {"i": i})
    assert rep.wait_until_drained(20.0)
    rep.stop()
    assert rule.fired == 4
    got = backend_events(local_server, quiet_service.session_id)
    assert names(got) == ["SESSION_START", *[f"step.{i}" for i in range(40)], "SESSION_END"]
    assert [e["event_session_index"] for e in got] == list(range(42))
    assert len({e["event_id"] for e in got}) == 42  # a re-sent batch is not stored twice
    assert rep.sent == 42
    assert rep.dropped == 0


def test_wait_until_drained_returns_once_the_backend_has_them(
    local_server: Any, quiet_service: ServiceClient
) -> None:
    local_server.faults.rules.append(FaultRule(path="/api/v1/telemetry$", delay_s=0.3))
    rep = fast_reporter(quiet_service, flush_interval=60.0)  # only explicit flushes
    for i in range(5):
        rep.log("drain.me", {"i": i})
    assert rep.wait_until_drained(10.0)
    got = backend_events(local_server, quiet_service.session_id)
    assert names(got) == ["SESSION_START"] + ["drain.me"] * 5
    assert rep.queued == 0
    rep.stop()


def test_wait_until_drained_gives_up_after_its_timeout_without_raising(
    local_server: Any, quiet_service: ServiceClient
) -> None:
    local_server.faults.rules.append(FaultRule(path="/api/v1/telemetry$", status=503))
    rep = fast_reporter(quiet_service)
    rep.log("never.delivered")
    t0 = time.monotonic()
    assert rep.wait_until_drained(0.3) is False
    assert time.monotonic() - t0 < 5.0
    assert rep.queued == 2  # kept for a later flush, not dropped
    assert rep.stop(timeout=0.2) is False
    assert rep.dropped == 3  # unsent at stop: SESSION_START, the event, SESSION_END
    assert backend_events(local_server, quiet_service.session_id) == []


def test_a_batch_the_backend_refuses_is_dropped_and_counted_not_retried_forever(
    local_server: Any, quiet_service: ServiceClient
) -> None:
    rule = FaultRule(path="/api/v1/telemetry$", status=400, times=1)
    local_server.faults.rules.append(rule)
    rep = fast_reporter(quiet_service, flush_interval=60.0)
    rep.log("first")
    assert rep.wait_until_drained(10.0)
    rep.log("second")
    assert rep.wait_until_drained(10.0)
    assert rule.fired == 1
    assert rep.dropped == 2
    assert names(backend_events(local_server, quiet_service.session_id)) == ["second"]
    rep.stop()


def test_service_client_reports_its_session_and_forwards_its_own_requests(
    local_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TINKER_TELEMETRY", "1")
    sc = ServiceClient(base_url=local_server.base_url, api_key=API_KEY, heartbeat_interval=0.05)
    rep = sc.telemetry_reporter
    assert isinstance(rep, TelemetryReporter)
    assert sc.get_telemetry() is rep
    rest = sc.create_rest_client()
    assert rest.get_telemetry() is rep
    rest.list_training_runs().result()  # a REST call carries no session: not forwarded
    assert rep.log("app.start", {"host": "here"}, "DEBUG")
    sid = sc.session_id
    beats: list[str] = []
    events.attach(
        "test.beats", "tinkjax.request.stop", lambda _, __, meta: beats.append(meta["path"])
    )
    try:  # heartbeats carry the session
        deadline = time.monotonic() + 30
        while beats.count("/api/v1/session_heartbeat") < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        events.detach("test.beats")
    sc.close()
    assert rep.stopped
    got = backend_events(local_server, sid)
    kinds = names(got)
    assert kinds[0] == "SESSION_START"
    assert kinds[-1] == "SESSION_END"
    assert kinds.count("SESSION_END") == 1
    stops = [e for e in got if e.get("event_name") == "tinkjax.request.stop"]
    paths = {e["event_data"]["metadata"]["path"] for e in stops}
    assert paths == {"/api/v1/session_heartbeat"}
    assert not any(p.startswith("/api/v1/telemetry") for p in paths)
    assert all(e["event_data"]["metadata"]["session_id"] == sid for e in stops)
    custom = next(e for e in got if e.get("event_name") == "app.start")
    assert custom["severity"] == "DEBUG"
    assert custom["event_data"] == {"host": "here"}
    assert {e["session_id"] for e in got} == {sid}


def test_the_kill_switch_sends_nothing(local_server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TINKER_TELEMETRY", "0")
    posted: list[str] = []

    def count(_: Any, __: Any, meta: Any) -> None:
        if str(meta.get("path", "")).startswith("/api/v1/telemetry"):
            posted.append(meta["path"])

    events.attach("test.kill-switch", "tinkjax.request.start", count)
    try:
        sc = ServiceClient(base_url=local_server.base_url, api_key=API_KEY, heartbeat_interval=0)
        assert sc.telemetry_reporter is None
        assert sc.get_telemetry() is None
        sc.create_rest_client().list_training_runs().result()
        sid = sc.session_id
        sc.close()
    finally:
        events.detach("test.kill-switch")
    assert posted == []
    assert backend_events(local_server, sid) == []


def test_exceptions_are_reported_as_the_official_sdk_reports_them(
    local_server: Any, quiet_service: ServiceClient
) -> None:
    rep = fast_reporter(quiet_service)
    try:
        raise RuntimeError("boom")
    except RuntimeError as exc:
        logged = rep.log_exception(exc)
    assert logged
    user = BadRequestError("bad field", status_code=400, body={"detail": "bad field"})
    assert rep.log_exception(user, "CRITICAL")
    assert rep.wait_until_drained(10.0)
    got = backend_events(local_server, quiet_service.session_id)[1:]
    assert got[0]["event"] == "UNHANDLED_EXCEPTION"
    assert got[0]["error_type"] == "RuntimeError"
    assert got[0]["error_message"] == "boom"
    assert "raise RuntimeError" in got[0]["traceback"]
    assert got[1]["event"] == "GENERIC_EVENT"
    assert got[1]["event_name"] == "user_error"
    assert got[1]["severity"] == "WARNING"
    assert got[1]["event_data"]["status_code"] == 400
    rep.stop()


def test_the_reporter_never_raises_into_user_code(
    local_server: Any, quiet_service: ServiceClient
) -> None:
    rep = fast_reporter(quiet_service)

    class Opaque:
        def __repr__(self) -> str:
            return "<opaque>"

    assert rep.log("bad.severity", severity="LOUD") is False
    assert rep.log("", {}) is False
    assert rep.log("odd.data", {"obj": Opaque(), 3: float("nan"), "big": "x" * 100_000})
    assert rep.log_exception(ValueError("v"), "NOT-A-LEVEL")  # falls back to ERROR
    assert rep.wait_until_drained(10.0)
    assert rep.stop() is True
    assert rep.stop() is True  # idempotent
    assert rep.log("after.stop") is False
    got = backend_events(local_server, quiet_service.session_id)
    odd = next(e for e in got if e.get("event_name") == "odd.data")
    assert odd["event_data"]["truncated"] is True  # the whole batch still went through
    assert [e["event"] for e in got].count("SESSION_END") == 1
    assert next(e for e in got if e["event"] == "UNHANDLED_EXCEPTION")["severity"] == "ERROR"


def test_events_of_other_sessions_are_not_forwarded(quiet_service: ServiceClient) -> None:
    rep = fast_reporter(quiet_service, forward_events=True, flush_interval=60.0)
    before = rep.queued
    sid = quiet_service.session_id
    meta = {"method": "POST", "path": "/api/v1/forward", "session_id": sid, "model_id": "m1"}
    events.emit("tinkjax.request.stop", {"duration_s": 0.01}, {**meta, "status": 200})
    events.emit("tinkjax.request.stop", {"duration_s": 0.01}, {**meta, "session_id": "other"})
    events.emit("tinkjax.request.stop", {}, {**meta, "path": "/api/v1/telemetry"})
    events.emit("tinkjax.custom_loss.stop", {"duration": 0.1}, {"model_id": "m1"})
    events.emit("tinkjax.custom_loss.stop", {"duration": 0.1}, {"model_id": "not-mine"})
    events.emit("tinkjax.request.exception", {}, {**meta, "error_type": "APIConnectionError"})
    assert rep.queued - before == 3
    queued = rep.pending()[before:]
    assert [e.event_name for e in queued] == [  # type: ignore[union-attr]
        "tinkjax.request.stop",
        "tinkjax.custom_loss.stop",
        "tinkjax.request.exception",
    ]
    assert [e.severity for e in queued] == ["INFO", "INFO", "ERROR"]
    rep.stop(timeout=10.0)


def test_an_unreachable_backend_costs_the_loop_nothing_and_memory_stays_bounded(
    local_server: Any, quiet_service: ServiceClient
) -> None:
    """Every telemetry connection is dropped; the queue is capped at 20 events. Calls of the
    loop are timed with and without a reporter flooding the queue (compared loosely)."""
    rest = quiet_service.create_rest_client()

    def loop(n: int) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            rest.list_training_runs().result()
        return time.perf_counter() - t0

    loop(5)  # warm up
    baseline = min(loop(20) for _ in range(2))
    local_server.faults.rules.append(FaultRule(path="/api/v1/telemetry$", drop=True))
    rep = fast_reporter(
        quiet_service, forward_events=True, max_queue_size=20, flush_threshold=5, max_retries=2
    )
    t0 = time.perf_counter()
    for _ in range(200):
        rep.log("flood", {"payload": "x" * 100})
    log_time = time.perf_counter() - t0
    with_reporter = min(loop(20) for _ in range(2))
    assert rep.queued <= 20
    assert rep.dropped > 150  # the rest was dropped and counted, not held
    assert rep.sent == 0
    assert with_reporter < 3 * baseline + 0.5, (with_reporter, baseline)
    # log() never waits on the network: 200 calls take far less than one send's timeout
    assert log_time < rep.http_timeout, log_time
    assert rep.stop(timeout=0.2) is False


def test_log_fatal_exception_is_delivered_before_the_process_exits(local_server: Any) -> None:
    marker = f"fatal-{uuid.uuid4().hex}"
    script = textwrap.dedent(
        f"""
        import os, sys
        from tinkjax.client import ServiceClient
        sc = ServiceClient(base_url={local_server.base_url!r}, api_key={API_KEY!r},
                           heartbeat_interval=0)
        print(sc.session_id, flush=True)
        try:
            raise RuntimeError({marker!r})
        except RuntimeError as exc:
            sc.telemetry_reporter.log_fatal_exception(exc, "CRITICAL")
        os._exit(3)  # no atexit, no finalizers: only what was flushed synchronously counts
        """
    )
    env = {**os.environ, "TINKER_TELEMETRY": "1"}
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 3, out.stderr
    sid = out.stdout.strip().splitlines()[-1]
    got = backend_events(local_server, sid)
    kinds = [e["event"] for e in got]
    assert kinds[0] == "SESSION_START", kinds
    assert kinds[-1] == "SESSION_END", kinds
    fatal = next(e for e in got if e["event"] == "UNHANDLED_EXCEPTION")
    assert fatal["error_message"] == marker
    assert fatal["severity"] == "CRITICAL"


def test_batches_are_the_official_sdks_telemetry_send_request(quiet_service: ServiceClient) -> None:
    """Each queued event and a whole request body validate as the official SDK's types."""
    import msgspec
    from tinker.types import TelemetrySendRequest as Official

    from tinkjax.types import TelemetrySendRequest

    rep = fast_reporter(quiet_service, flush_interval=60.0)
    rep.log("x", {"a": [1, 2]}, "WARNING")
    try:
        raise KeyError("k")
    except KeyError as exc:
        rep.log_exception(exc)
    rep.log_exception(BadRequestError("no", status_code=422))
    body = msgspec.json.encode(
        TelemetrySendRequest(
            events=rep.pending(),
            platform="Linux",
            sdk_version="0.1.0",
            session_id=quiet_service.session_id,
            process_uuid="p",
        )
    )
    parsed = Official.model_validate_json(body)
    kinds = [type(e).__name__ for e in parsed.events]
    assert kinds == ["SessionStartEvent", "GenericEvent", "UnhandledExceptionEvent", "GenericEvent"]
    assert parsed.events[1].event_data == {"a": [1, 2]}
    rep.stop()


@pytest.mark.parametrize(
    ("value", "on"),
    [(None, True), ("1", True), ("TRUE", True), (" yes ", True), ("on", True), ("0", False),
     ("false", False), ("", False), ("off", False)],
)  # fmt: skip
def test_tinker_telemetry_is_read_as_the_official_sdk_reads_it(value: str | None, on: bool) -> None:
    from tinkjax.client._telemetry import telemetry_enabled

    assert telemetry_enabled({} if value is None else {"TINKER_TELEMETRY": value}) is on


def test_stop_does_not_hold_a_close_up_once_the_backend_looks_unreachable(
    local_server: Any, quiet_service: ServiceClient
) -> None:
    local_server.faults.rules.append(FaultRule(path="/api/v1/telemetry$", drop=True))
    rep = fast_reporter(quiet_service, max_retries=1)
    rep.log("lost")
    assert rep.wait_until_drained(2.0) is False  # the sends used up their retries
    t0 = time.monotonic()
    assert rep.stop(timeout=30.0) is False
    assert time.monotonic() - t0 < 10.0  # waited about 1 s, not the 30 s asked for
    assert rep.dropped == 3
