"""Tenant isolation through raw HTTP: another key's objects do not exist (404, the very answer
an unknown id gets), and every route but the public ones answers 401 without a key."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tinkjax.server import ServerHandle
from tinkjax.server._routes import Get, Post, route_table

from .conftest import ce_datum, fwdbwd_body, new_model, new_session, post, result

TOKENS = list(b"what is mine is mine")
OTHER_KEY = "tml-another-tenant"
ADAM = {"learning_rate": 0.01}


@pytest.fixture(scope="module")
def other(server: ServerHandle) -> Iterator[httpx.Client]:
    """A raw HTTP client with another tenant's key."""
    headers = {"X-API-Key": OTHER_KEY}
    with httpx.Client(base_url=server.base_url, headers=headers, timeout=60) as client:
        yield client


def _ok(r: httpx.Response) -> Any:
    assert r.status_code == 200, r.text
    out = r.json()
    assert "error" not in out, out
    return out


def _ordered(http: httpx.Client, server: ServerHandle, path: str, body: dict[str, Any]) -> Any:
    seq = server.scheduler.next_seq(body["model_id"])
    r = post(http, path, {**body, "seq_id": seq})
    return _ok(result(http, _ok(r)["request_id"]))


@pytest.fixture(scope="module")
def owned(http: httpx.Client, server: ServerHandle) -> dict[str, str]:
    """Objects of the default tenant: a session, a trained model, two checkpoints, a sampler,
    a finished future and a telemetry event."""
    session = new_session(http)
    model = new_model(http, session)
    fb = post(http, "forward_backward", fwdbwd_body(model, server.scheduler.next_seq(model),
                                                    [ce_datum(TOKENS)]))  # fmt: skip
    _ok(result(http, _ok(fb)["request_id"]))
    state = _ordered(http, server, "save_weights", {"model_id": model, "path": "mine"})["path"]
    peft = _ordered(
        http, server, "save_weights_for_sampler", {"model_id": model, "path": "mine-peft"}
    )["path"]
    sampler = _ok(post(http, "create_sampling_session", {
        "session_id": session, "sampling_session_seq_id": 0, "model_path": peft,
    }))["sampling_session_id"]  # fmt: skip
    event = {"event": "GENERIC_EVENT", "event_id": f"mine-{uuid.uuid4().hex}",
             "event_session_index": 0, "severity": "INFO",
             "timestamp": "2026-01-01T00:00:00+00:00", "event_name": "mine"}  # fmt: skip
    _ok(post(http, "telemetry", {"events": [event], "session_id": session}))
    return {
        "session": session, "model": model, "state": state, "peft": peft, "sampler": sampler,
        "request": fb.json()["request_id"], "event": event["event_id"],
    }  # fmt: skip


def _same_404(mine: httpx.Response, unknown: httpx.Response, mine_id: str, unknown_id: str) -> None:
    """``mine`` (another tenant's id) is answered exactly as ``unknown`` (an id that was never
    created): same status, same body but for the id itself."""
    assert mine.status_code == 404, mine.text
    assert unknown.status_code == 404, unknown.text
    assert mine.json() == {
        k: v.replace(unknown_id, mine_id) if isinstance(v, str) else v
        for k, v in unknown.json().items()
    }


def test_ids_of_another_tenant_answer_as_unknown_ones(
    other: httpx.Client, owned: dict[str, str]
) -> None:
    session, model, state = owned["session"], owned["model"], owned["state"]
    ghost_session = str(uuid.uuid4())
    ghost_model = f"{ghost_session}:train:0"
    ghost_state = f"tinker://{ghost_model}/weights/mine"
    mine_session = new_session(other)  # the other tenant's own session, for cross references
    cases: list[tuple[str, str, Any, str, str]] = [
        ("GET", f"sessions/{session}", None, session, ghost_session),
        ("POST", f"sessions/{session}/finish", {"reason": {"type": "success"}}, session,
         ghost_session),
        ("POST", "session_heartbeat", {"session_id": session}, session, ghost_session),
        ("POST", "create_model", {"session_id": session, "model_seq_id": 1,
                                  "base_model": "tinkjax/bytelm-micro"}, session, ghost_session),
        ("POST", "get_info", {"model_id": model}, model, ghost_model),
        ("POST", "forward_backward", fwdbwd_body(model, 5, [ce_datum(TOKENS)]), model,
         ghost_model),
        ("POST", "forward", fwdbwd_body(model, 5, [ce_datum(TOKENS)], forward=True), model,
         ghost_model),
        ("POST", "optim_step", {"model_id": model, "seq_id": 5, "adam_params": ADAM}, model,
         ghost_model),
        ("POST", "save_weights", {"model_id": model, "seq_id": 5, "path": "x"}, model,
         ghost_model),
        ("POST", "save_weights_for_sampler", {"model_id": model, "seq_id": 5,
                                              "sampling_session_seq_id": 9}, model, ghost_model),
        ("POST", "unload_model", {"model_id": model}, model, ghost_model),
        ("POST", "load_weights", {"model_id": model, "seq_id": 5, "path": state,
                                  "optimizer": False}, model,
         ghost_model),
        ("POST", "load_weights", {"session_id": mine_session, "model_seq_id": 0, "path": state,
                                  "optimizer": False},
         state, ghost_state),
        ("POST", "weights_info", {"tinker_path": state}, state, ghost_state),
        ("POST", "create_sampling_session", {"session_id": mine_session,
                                             "sampling_session_seq_id": 0,
                                             "model_path": owned["peft"]},
         owned["peft"], f"tinker://{ghost_model}/sampler_weights/mine-peft"),
        ("GET", f"samplers/{owned['sampler']}", None, owned["sampler"], f"{ghost_session}:s:0"),
        ("POST", "asample", {"sampling_session_id": owned["sampler"], "num_samples": 1,
                             "prompt": {"chunks": [{"type": "encoded_text", "tokens": [1]}]},
                             "sampling_params": {"max_tokens": 2}},
         owned["sampler"], f"{ghost_session}:s:0"),
        ("POST", "asample", {"model_path": state, "num_samples": 1,
                             "prompt": {"chunks": [{"type": "encoded_text", "tokens": [1]}]},
                             "sampling_params": {"max_tokens": 2}}, state, ghost_state),
        ("POST", "retrieve_future", {"request_id": owned["request"]}, owned["request"],
         uuid.uuid4().hex),
        ("GET", f"training_runs/{model}", None, model, ghost_model),
        ("GET", f"training_runs/{model}/checkpoints", None, model, ghost_model),
        ("GET", f"training_runs/{model}/checkpoints/weights/mine", None, model, ghost_model),
        ("DELETE", f"training_runs/{model}/checkpoints/weights/mine", None, model, ghost_model),
        ("GET", f"training_runs/{model}/checkpoints/weights/mine/archive", None, model,
         ghost_model),
        ("POST", f"training_runs/{model}/checkpoints/weights/mine/publish", None, model,
         ghost_model),
        ("PUT", f"training_runs/{model}/checkpoints/weights/mine/ttl", {"ttl_seconds": 1}, model,
         ghost_model),
    ]  # fmt: skip
    for method, path, body, mine_id, ghost_id in cases:
        ghost_body = None if body is None else _swap(body, mine_id, ghost_id)
        answers = [
            other.request(method, f"/api/v1/{path.replace(mine_id, ident)}", json=b)
            for ident, b in ((mine_id, body), (ghost_id, ghost_body))
        ]
        _same_404(*answers, mine_id, ghost_id)


def _swap(body: Any, old: str, new: str) -> Any:
    if isinstance(body, dict):
        return {k: _swap(v, old, new) for k, v in body.items()}
    if isinstance(body, list):
        return [_swap(v, old, new) for v in body]
    return body.replace(old, new) if isinstance(body, str) else body


def test_another_tenant_changes_nothing(
    http: httpx.Client, other: httpx.Client, server: ServerHandle, owned: dict[str, str]
) -> None:
    """The refused delete, optimizer step and unload of the other tenant left everything
    in place (run after the 404s above)."""
    model = owned["model"]
    ck = http.get(f"/api/v1/training_runs/{model}/checkpoints/weights/mine")
    assert ck.status_code == 200, ck.text
    assert server.applied_count(model, server.scheduler.next_seq(model)) == 0
    assert _ok(post(http, "get_info", {"model_id": model}))["model_id"] == model
    heartbeat = post(http, "session_heartbeat", {"session_id": owned["session"]})
    assert heartbeat.status_code == 200


def test_listings_hold_only_the_tenants_objects(
    http: httpx.Client, other: httpx.Client, owned: dict[str, str]
) -> None:
    theirs = new_session(other)
    mine = http.get("/api/v1/sessions", params={"limit": 10000}).json()["sessions"]
    assert owned["session"] in mine
    assert theirs not in mine
    seen = other.get("/api/v1/sessions", params={"limit": 10000}).json()["sessions"]
    assert theirs in seen
    assert owned["session"] not in seen
    runs = other.get("/api/v1/training_runs", params={"limit": 10000}).json()
    assert owned["model"] not in {r["training_run_id"] for r in runs["training_runs"]}
    assert runs["cursor"]["total_count"] == len(runs["training_runs"])
    my_runs = http.get("/api/v1/training_runs", params={"limit": 10000}).json()["training_runs"]
    assert owned["model"] in {r["training_run_id"] for r in my_runs}
    cks = other.get("/api/v1/checkpoints", params={"limit": 10000}).json()["checkpoints"]
    assert not {owned["state"], owned["peft"]} & {c["tinker_path"] for c in cks}
    my_cks = http.get("/api/v1/checkpoints", params={"limit": 10000}).json()["checkpoints"]
    assert {owned["state"], owned["peft"]} <= {c["tinker_path"] for c in my_cks}
    for params in ({}, {"session_id": owned["session"]}):
        events = other.get("/api/v1/telemetry/events", params=params).json()["events"]
        assert owned["event"] not in {e.get("event_id") for e in events}
    events = http.get("/api/v1/telemetry/events", params={"session_id": owned["session"]})
    assert owned["event"] in {e.get("event_id") for e in events.json()["events"]}


def test_archive_links_are_signed_and_bound_to_the_tenant(
    http: httpx.Client, other: httpx.Client, owned: dict[str, str]
) -> None:
    model = owned["model"]
    redirect = http.get(
        f"/api/v1/training_runs/{model}/checkpoints/weights/mine/archive", follow_redirects=False
    )
    assert redirect.status_code == 302, redirect.text
    link = redirect.headers["location"]
    assert http.get(link).status_code == 200
    assert httpx.get(link, timeout=60).status_code == 200  # the link is the credential
    assert other.get(link).status_code == 404  # but not for another key
    token = re.search(r"/archives/(.+)\.tar\.gz$", link).group(1)  # type: ignore[union-attr]
    body, signature = token.split(".")
    forged = [
        f"{body}.{signature[:-2]}AA",
        f"{body[:-4]}AAAA.{signature}",
        "nonsense",
        f"{body}",
    ]
    for bad in forged:
        r = httpx.get(link.replace(token, bad), timeout=60)
        assert r.status_code == 404, (bad, r.text)
        assert r.json()["type"] == "not_found"


def test_expired_archive_links_are_refused(owned: dict[str, str]) -> None:
    from tinkjax.server import start

    with (
        start(archive_link_ttl_s=0.5, long_poll_s=1.0) as srv,
        httpx.Client(base_url=srv.base_url, headers={"X-API-Key": "tml-x"}, timeout=60) as h,
    ):
        model = new_model(h, new_session(h))
        seq = srv.scheduler.next_seq(model)
        saved = post(h, "save_weights", {"model_id": model, "path": "s", "seq_id": seq})
        _ok(result(h, saved.json()["request_id"]))
        link = h.get(
            f"/api/v1/training_runs/{model}/checkpoints/weights/s/archive", follow_redirects=False
        ).headers["location"]
        assert h.get(link).status_code == 200
        import time

        time.sleep(2.1)  # expiry is whole seconds, rounded up
        assert h.get(link).status_code == 404


def _fill(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x", path)


def test_every_route_but_the_public_ones_needs_a_key(server: ServerHandle) -> None:
    table = route_table(server.backend, max_body_bytes=1024, long_poll_s=0.0)
    checked = 0
    with httpx.Client(base_url=server.base_url, timeout=60) as anonymous:
        for row in table:
            if getattr(row, "public", False):
                continue
            methods = (
                ("POST",)
                if isinstance(row, Post)
                else ("GET",)
                if isinstance(row, Get)
                else row.methods
            )  # type: ignore[union-attr]
            for method in methods:
                for headers in ({}, {"X-API-Key": "has space"}, {"X-API-Key": ""}):
                    r = anonymous.request(method, _fill(row.path), json={}, headers=headers)
                    assert r.status_code == 401, (method, row.path, r.text)
                    assert r.json()["type"] == "unauthorized"
                    assert r.json()["status"] == 401
                    assert "API key" in r.json()["detail"]
                    checked += 1
        assert anonymous.get("/api/v1/healthz").status_code == 200
    assert checked > 3 * 25


def test_a_data_dir_from_before_keys_opens_and_its_rows_belong_to_no_key(tmp_path: Path) -> None:
    import sqlite3

    from tinkjax.server._store import Store

    old = sqlite3.connect(tmp_path / "meta.sqlite")
    old.executescript(
        "CREATE TABLE sessions (session_id TEXT PRIMARY KEY, tags TEXT NOT NULL,"
        " user_metadata TEXT, display_name TEXT, sdk_version TEXT NOT NULL,"
        " created_at TEXT NOT NULL, last_heartbeat TEXT NOT NULL, finished_at TEXT,"
        " finish_reason TEXT, finish_detail TEXT, next_model_seq INTEGER NOT NULL DEFAULT 0,"
        " next_sampler_seq INTEGER NOT NULL DEFAULT 0);"
        "CREATE TABLE telemetry (id INTEGER PRIMARY KEY AUTOINCREMENT, session_id TEXT,"
        " event TEXT, event_name TEXT, received_at TEXT NOT NULL, payload TEXT NOT NULL);"
        "INSERT INTO sessions (session_id, tags, sdk_version, created_at, last_heartbeat)"
        " VALUES ('old', '[]', 'x', '2026-01-01T00:00:00', '2026-01-01T00:00:00');"
    )
    old.commit()
    old.close()
    with Store(tmp_path) as store:
        assert store.sessions.has("old")
        assert store.sessions.tenant_of("old") is None
        assert store.sessions.page(tenant="anyone").sessions == []
        store.sessions.add("new", tags=[], user_metadata=None, sdk_version="x", tenant="t")
        assert store.sessions.page(tenant="t").sessions == ["new"]
        store.telemetry.add(None, [{"event": "X"}], tenant="t")
        assert len(store.telemetry.query(tenant="t")) == 1
        assert store.telemetry.query(tenant="u") == []


def test_a_refused_request_naming_another_tenants_model_uses_none_of_its_seq_ids(
    http: httpx.Client, other: httpx.Client, server: ServerHandle, owned: dict[str, str]
) -> None:
    model = owned["model"]
    seq = server.scheduler.next_seq(model)
    bad = {"model_id": model, "seq_id": seq, "adam_params": {"learning_rate": "fast"}}
    assert post(other, "optim_step", bad).status_code == 400  # refused before ownership
    ok = post(http, "optim_step", {"model_id": model, "seq_id": seq, "adam_params": ADAM})
    assert "error" not in _ok(result(http, _ok(ok)["request_id"]))
