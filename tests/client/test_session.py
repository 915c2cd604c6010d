"""``SessionContext`` against the canned service: the server's config and the session come in
the background, counters are per session, heartbeats stop on 410 and failures are reported
once after the grace period, closing finishes the session once."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tinkjax import events
from tinkjax.client import SessionContext, Transport, resolve_config
from tinkjax.client import _session as session_module
from tinkjax.client._loop import submit
from tinkjax.codec import JSON_WIRE, PROTOBUF_WIRE

from .conftest import API_KEY
from .fake import FakeTinker


def _context(fake: FakeTinker, **kw: Any) -> SessionContext:
    config = resolve_config(
        base_url="http://fake.test",
        api_key=API_KEY,
        environ={},
        wire_mode=kw.pop("wire_mode", None),
    )
    return SessionContext(config, Transport(config, http_transport=fake.transport()), **kw)


@pytest.fixture
def ctx(fake: FakeTinker) -> Iterator[SessionContext]:
    fake.config = {"fwdbwd_max_chunk_len": 7}
    c = _context(fake, heartbeat_interval=0)
    yield c
    submit(c.close("success", None)).result(timeout=30)


def test_session_and_server_config_arrive_in_the_background(ctx: SessionContext) -> None:
    assert submit(ctx.get_session_id()).result(timeout=30) == "sess-1"
    assert ctx.session_id_if_ready == "sess-1"
    assert ctx.server_config.fwdbwd_max_chunk_len == 7
    assert ctx.ids(model_id="m") == {"session_id": "sess-1", "model_id": "m"}


def test_counters_are_per_session_and_consecutive(fake: FakeTinker, ctx: SessionContext) -> None:
    assert [ctx.next_model_seq() for _ in range(3)] == [0, 1, 2]
    assert [ctx.next_sampling_seq() for _ in range(2)] == [0, 1]
    other = _context(fake, heartbeat_interval=0)
    try:
        assert other.next_model_seq() == 0
    finally:
        submit(other.close("success", None)).result(timeout=30)


@pytest.mark.parametrize(("mode", "wire"), [("protobuf", PROTOBUF_WIRE), ("json", JSON_WIRE)])
def test_the_wire_is_chosen_once_from_the_config(fake: FakeTinker, mode: str, wire: Any) -> None:
    c = _context(fake, heartbeat_interval=0, wire_mode=mode)
    try:
        assert c.wire is wire
    finally:
        submit(c.close("success", None)).result(timeout=30)


def test_close_finishes_once_and_closes_the_transport(
    fake: FakeTinker, ctx: SessionContext
) -> None:
    assert ctx.session_id() == "sess-1"
    submit(ctx.close("interrupted", "KeyboardInterrupt")).result(timeout=30)
    submit(ctx.close("success", None)).result(timeout=30)  # a second close does nothing
    assert fake.finished == [
        {"session_id": "sess-1", "reason": {"type": "interrupted"}, "detail": "KeyboardInterrupt"}
    ]
    assert ctx.transport.closed
    with pytest.raises(RuntimeError, match="closed"):
        ctx.check_open()


def test_heartbeats_stop_when_the_session_expired(fake: FakeTinker) -> None:
    fake.fault(r"/session_heartbeat$", status=410, times=100)
    c = _context(fake, heartbeat_interval=0.01)
    try:
        assert c.session_id() == "sess-1"
        time.sleep(0.2)
        beats = [r for r in fake.requests if r.url.path.endswith("/session_heartbeat")]
        assert len(beats) == 1  # the 410 ended the loop
    finally:
        submit(c.close("success", None)).result(timeout=30)


def test_heartbeat_failures_are_reported_once_after_the_grace_period(
    fake: FakeTinker, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(session_module, "_HEARTBEAT_GRACE_S", 0.05)
    fake.fault(r"/session_heartbeat$", status=500, times=10**6)
    seen: list[dict[str, Any]] = []
    events.attach(
        "hb", [("tinkjax", "session", "heartbeat_failed")], lambda n, m, md: seen.append(md)
    )
    caplog.set_level(logging.WARNING, logger="tinkjax.client")
    c = _context(fake, heartbeat_interval=0.01)
    try:
        assert c.session_id() == "sess-1"
        time.sleep(0.4)
    finally:
        events.detach("hb")
        submit(c.close("success", None)).result(timeout=30)
    assert seen == [{"session_id": "sess-1"}]
    assert len([r for r in caplog.records if "no successful heartbeat" in r.getMessage()]) == 1
