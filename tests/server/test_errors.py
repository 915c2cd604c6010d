"""Only the library's own errors blame the request; a bug in server code is a 500 with a JSON
body and a logged traceback, on the HTTP path and on the worker path."""

from __future__ import annotations

import logging

import httpx
import pytest

from tinkjax.errors import DecodeError
from tinkjax.server import ServerHandle
from tinkjax.server._errors import ApiError, category_of, describe, error_body, status_of
from tinkjax.server._store import DuplicateIdError, InvalidNameError, UnknownSessionError

from .conftest import MICRO, new_model, new_session, post, result


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (ApiError(413, "too big"), 413),
        (UnknownSessionError("s"), 404),
        (DuplicateIdError("session_id", "s"), 400),
        (InvalidNameError("bad", field="name", value="x"), 400),
        (DecodeError("malformed JSON"), 400),
        (KeyError("model"), 500),
        (TypeError("unhashable"), 500),
        (ValueError("bad value"), 500),
        (OverflowError("big"), 500),
    ],
)
def test_status_of_blames_the_user_only_for_library_errors(exc: Exception, status: int) -> None:
    assert status_of(exc) == status
    assert category_of(exc) == ("user" if status < 500 else "server")


def test_server_bug_message_names_the_server_not_the_request() -> None:
    text = describe(KeyError("model"))
    assert "internal server error" in text
    assert "KeyError" in text
    assert error_body(KeyError("model"), 500).startswith(b'{"detail": "internal server error')


@pytest.mark.parametrize("error", [KeyError("model_id"), TypeError("'NoneType' object")])
def test_handler_bug_is_500_with_json_and_traceback(
    http: httpx.Client,
    server: ServerHandle,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    error: Exception,
) -> None:
    def broken(model_id: object) -> None:
        raise error

    model = new_model(http, new_session(http))  # the tenant's own: an unknown one is a 404
    monkeypatch.setattr(server.backend.models, "get_info", broken)
    with caplog.at_level(logging.ERROR, logger="tinkjax.server"):
        r = post(http, "get_info", {"model_id": model})
    assert r.status_code == 500, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert body["status"] == 500
    assert body["type"] == "server_error"
    assert type(error).__name__ in body["detail"]
    logged = [rec for rec in caplog.records if rec.name == "tinkjax.server" and rec.exc_info]
    assert logged, caplog.records
    assert logged[-1].exc_info is not None
    assert logged[-1].exc_info[0] is type(error)
    assert "/api/v1/get_info" in logged[-1].getMessage()


def test_worker_bug_fails_the_future_as_server_category(
    http: httpx.Client,
    server: ServerHandle,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    model = new_model(http, new_session(http))
    runtime = server.backend.models.runtime(MICRO)  # created by new_model: a lookup only

    def broken(adapter_id: str, hyper: object) -> None:
        raise KeyError("grad_norm")

    monkeypatch.setattr(runtime, "optim_step", broken)
    seq = server.scheduler.next_seq(model)
    with caplog.at_level(logging.ERROR, logger="tinkjax.server"):
        r = post(http, "optim_step", {"model_id": model, "seq_id": seq})
        assert r.status_code == 200, r.text
        out = result(http, r.json()["request_id"]).json()
    assert out["category"] == "server"
    assert "internal server error" in out["error"]
    assert any(rec.exc_info and rec.exc_info[0] is KeyError for rec in caplog.records)
