"""The telemetry store keeps an event id once per tenant: a re-sent batch is not stored twice."""

from __future__ import annotations

from pathlib import Path

from tinkjax.server._store import Store


def event(event_id: str, name: str) -> dict[str, object]:
    return {"event": "GENERIC_EVENT", "event_id": event_id, "event_name": name,
            "event_session_index": 0, "severity": "INFO", "timestamp": "2026-01-01T00:00:00Z"}  # fmt: skip


def test_a_resent_event_id_is_stored_once_per_tenant(tmp_path: Path) -> None:
    store = Store(tmp_path)
    t = store.telemetry
    assert t.add("s1", [event("e1", "a"), event("e2", "b")], tenant="alice") == 2
    assert t.add("s1", [event("e2", "b"), event("e3", "c")], tenant="alice") == 1  # e2 again
    assert t.add("s1", [event("e4", "d"), event("e4", "d")], tenant="alice") == 1  # twice in one
    assert t.add("s9", [event("e1", "x")], tenant="bob") == 1  # another tenant's own id space
    got = [e["event_name"] for e in t.query(session_id="s1", tenant="alice")]
    assert got == ["a", "b", "c", "d"]
    assert [e["event_name"] for e in t.query(tenant="bob")] == ["x"]
    no_id = {"event": "SESSION_START"}
    assert t.add("s1", [no_id, no_id], tenant="alice") == 2  # events without an id are all kept
