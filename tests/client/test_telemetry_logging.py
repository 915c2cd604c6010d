"""events.attach_logger and the default metrics against real requests to the local backend."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from tinkjax import events, metrics
from tinkjax.client import ServiceClient

from .conftest import API_KEY


def test_attach_logger_logs_requests_until_detached(
    local_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="tinkjax.events")
    hid = events.attach_logger(level="DEBUG")
    assert hid in events.handlers()
    try:
        sc = ServiceClient(base_url=local_server.base_url, api_key=API_KEY, heartbeat_interval=0)
        sc.session_id  # noqa: B018
        rest = sc.create_rest_client()
        rest.list_training_runs().result()
    finally:
        assert events.detach(hid)
    lines = [r for r in caplog.records if r.name == "tinkjax.events"]
    runs = [r for r in lines if "/api/v1/training_runs" in r.getMessage()]
    assert runs
    assert runs[0].levelno == logging.DEBUG
    assert "-> 200 in" in runs[0].getMessage()
    caplog.clear()
    rest.list_training_runs().result()
    sc.close()
    assert not [r for r in caplog.records if r.name == "tinkjax.events"]


def test_attach_logger_logs_failures_at_warning_and_refuses_bad_levels(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="app")
    hid = events.attach_logger(logging.INFO, logger=logging.getLogger("app"))
    try:
        events.emit(
            "tinkjax.request.exception",
            {"duration_s": 0.5},
            {"method": "GET", "path": "/x", "error_type": "APIConnectionError", "error": "reset"},
        )
        events.emit(
            "tinkjax.future.queue_state",
            {"iteration": 1},
            {"request_id": "r1", "queue_state": "paused_capacity", "reason": "busy"},
        )
    finally:
        events.detach(hid)
    (failure, queue) = [r for r in caplog.records if r.name == "app"]
    assert failure.levelno == logging.WARNING
    assert "APIConnectionError: reset" in failure.getMessage()
    assert queue.levelno == logging.INFO
    assert "paused_capacity (busy)" in queue.getMessage()
    with pytest.raises(ValueError, match="LOUD"):
        events.attach_logger("LOUD")


def test_real_requests_reach_the_default_metrics(local_server: Any) -> None:
    before = metrics.snapshot()
    sc = ServiceClient(base_url=local_server.base_url, api_key=API_KEY, heartbeat_interval=0)
    sc.session_id  # noqa: B018
    sc.close()
    after = metrics.snapshot()
    labels = {"method": "POST", "path": "/api/v1/create_session", "status": 200}
    assert after.counter("tinkjax_requests_total", **labels) == (
        before.counter("tinkjax_requests_total", **labels) + 1
    )
    finish = after.histogram(
        "tinkjax_request_duration_seconds", method="POST", path="/api/v1/sessions/{id}/finish"
    )
    assert finish is not None
    assert finish.count >= 1
    assert finish.min > 0
