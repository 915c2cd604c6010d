"""Telemetry events the SDKs post, kept (newest ``max_events``) for tests and debugging."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import msgspec

from ._store_db import Database
from ._store_errors import InvalidNameError
from ._store_util import check_page, iso, utc_now

__all__ = ["Telemetry"]


class Telemetry:
    """The ``telemetry`` table.

    Args:
        db: the store's database.
        max_events: the most events kept; the oldest are dropped beyond it.
    """

    def __init__(self, db: Database, *, max_events: int) -> None:
        self._db = db
        self.max_events = max_events

    def add(self, session_id: str | None, events: Sequence[Any]) -> int:
        """Keep telemetry events (mappings or wire Structs); returns how many were stored."""
        now = iso(utc_now())
        rows = []
        for ev in events:
            data = msgspec.to_builtins(ev)
            if not isinstance(data, dict):
                raise InvalidNameError(
                    f"a telemetry event must be an object, got {type(ev).__name__}",
                    field="events",
                    value=type(ev).__name__,
                )
            kind = data.get("event")
            name = data.get("event_name", kind)
            rows.append((session_id, kind, name, now, json.dumps(data, sort_keys=True)))
        with self._db.lock, self._db.tx() as c:
            c.executemany(
                "INSERT INTO telemetry (session_id, event, event_name, received_at, payload)"
                " VALUES (?,?,?,?,?)",
                rows,
            )
            c.execute(
                "DELETE FROM telemetry WHERE id <= (SELECT MAX(id) FROM telemetry) - ?",
                (self.max_events,),
            )
        return len(rows)

    def query(
        self, *, session_id: str | None = None, event_name: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """The latest ``limit`` events (oldest first) matching the filters.

        ``event_name`` matches a GENERIC_EVENT's ``event_name`` or any event's type
        (``SESSION_START``, ...). Each dict is the event as received plus ``session_id``.
        """
        check_page(limit, 0)
        where, args = [], []
        if session_id is not None:
            where.append("session_id=?")
            args.append(session_id)
        if event_name is not None:
            where.append("(event_name=? OR event=?)")
            args += [event_name, event_name]
        sql = "SELECT session_id, payload FROM telemetry"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id DESC LIMIT ?"
        with self._db.lock:
            rows = self._db.all(sql, (*args, limit))
        out = []
        for r in reversed(rows):
            ev: dict[str, Any] = json.loads(r["payload"])
            ev.setdefault("session_id", r["session_id"])
            out.append(ev)
        return out
