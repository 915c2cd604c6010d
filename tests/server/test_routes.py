"""The route table: every row is served, and no SQLite work runs on the event loop thread."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tinkjax.server import ServerHandle
from tinkjax.server._routes import Get, Post, Raw, route_table

from .conftest import ce_datum, fwdbwd_body, new_model, new_session, post, result


def test_every_route_is_a_row_and_paths_are_unique(server: ServerHandle) -> None:
    table = route_table(server.backend, max_body_bytes=1024, long_poll_s=0.0)
    paths = [row.path for row in table]
    assert len(paths) == len(set(paths))
    assert all(isinstance(row, Post | Get | Raw) for row in table)
    plain = sum(isinstance(row, Post | Get) for row in table)
    assert plain >= 20  # the copies of one shape became rows


def test_sqlite_work_never_runs_on_the_event_loop(
    http: httpx.Client, server: ServerHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    session = new_session(http)
    model = new_model(http, session)
    seq = server.scheduler.next_seq(model)
    saved = post(http, "save_weights", {"model_id": model, "path": "loop", "seq_id": seq})
    assert "error" not in result(http, saved.json()["request_id"]).json()

    db = server.backend.store.db
    threads: list[tuple[str, int]] = []

    def spy(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            threads.append((name, threading.get_ident()))
            return fn(*args, **kwargs)

        return wrapped

    for name in ("execute", "one", "all", "tx"):
        monkeypatch.setattr(db, name, spy(name, getattr(db, name)))
    checkpoint = f"/api/v1/training_runs/{model}/checkpoints/weights/loop"
    calls = [
        ("GET", "/api/v1/sessions", None),
        ("GET", f"/api/v1/sessions/{session}", None),
        ("POST", "/api/v1/session_heartbeat", {"session_id": session}),
        ("POST", "/api/v1/telemetry", {"events": [{"event": "X"}], "session_id": session}),
        ("GET", "/api/v1/telemetry/events", None),
        ("GET", "/api/v1/checkpoints", None),
        ("GET", "/api/v1/training_runs", None),
        ("GET", f"/api/v1/training_runs/{model}", None),
        ("GET", f"/api/v1/training_runs/{model}/checkpoints", None),
        ("GET", checkpoint, None),
        ("POST", f"{checkpoint}/publish", None),
        ("PUT", f"{checkpoint}/ttl", {"ttl_seconds": 3600}),
        ("POST", "/api/v1/weights_info", {"tinker_path": f"tinker://{model}/weights/loop"}),
        ("POST", "/api/v1/create_session", {"tags": [], "sdk_version": "t"}),
        (
            "POST",
            "/api/v1/forward",
            fwdbwd_body(model, seq + 1, [ce_datum([1, 2, 3])], forward=True),
        ),
    ]
    for method, path, body in calls:
        r = http.request(method, path, json=body)
        assert r.status_code == 200, (method, path, r.text)
    loop_thread = server._thread.ident
    assert loop_thread is not None
    assert threads, "the spies saw no SQLite work"
    on_loop = [name for name, ident in threads if ident == loop_thread]
    assert on_loop == [], f"SQLite calls on the event loop thread: {on_loop}"
