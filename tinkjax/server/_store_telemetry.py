"""Telemetry events the SDKs post, kept (the newest ``max_events``, at most ``max_bytes`` of
payload) for tests and debugging; one event over ``max_event_bytes`` is refused.

An event whose ``event_id`` the same tenant already posted is not stored again: an SDK that
re-sends a batch whose answer it never got (its retry after a lost acknowledgement) does not
duplicate it."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import msgspec

from ._store_db import Database
from ._store_errors import InvalidNameError
from ._store_util import check_page, iso, utc_now

__all__ = ["MAX_TELEMETRY_EVENT_BYTES", "Telemetry"]

#: The largest telemetry event accepted (its JSON encoding).
MAX_TELEMETRY_EVENT_BYTES = 64 * 1024


class Telemetry:
    """The ``telemetry`` table.

    Args:
        db: the store's database.
        max_events: the most events kept; the oldest are dropped beyond it.
        max_bytes: the most payload bytes kept; the oldest events are dropped beyond it.
        max_event_bytes: a larger event is refused (``InvalidNameError`` naming it).
    """

    def __init__(
        self,
        db: Database,
        *,
        max_events: int,
        max_bytes: int = 64 * 2**20,
        max_event_bytes: int = MAX_TELEMETRY_EVENT_BYTES,
    ) -> None:
        if max_bytes < max_event_bytes:
            raise ValueError(
                f"max_bytes ({max_bytes}) must be >= max_event_bytes ({max_event_bytes})"
            )
        self._db = db
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.max_event_bytes = max_event_bytes
        with db.lock:
            db.execute(
                "CREATE INDEX IF NOT EXISTS telemetry_event_id"
                " ON telemetry(json_extract(payload, '$.event_id'))"
            )
            self._bytes = int(
                db.one("SELECT COALESCE(SUM(length(payload)), 0) FROM telemetry")[0]  # type: ignore[index]
            )

    def add(
        self, session_id: str | None, events: Sequence[Any], *, tenant: str | None = None
    ) -> int:
        """Keep telemetry events (mappings or wire Structs) posted by ``tenant``; returns how
        many were stored (an ``event_id`` the tenant already posted is skipped)."""
        now = iso(utc_now())
        candidates = []
        for i, ev in enumerate(events):
            data = msgspec.to_builtins(ev)
            if not isinstance(data, dict):
                raise InvalidNameError(
                    f"a telemetry event must be an object, got {type(ev).__name__}",
                    field="events",
                    value=type(ev).__name__,
                )
            kind = data.get("event")
            name = data.get("event_name", kind)
            payload = json.dumps(data, sort_keys=True)
            if len(payload) > self.max_event_bytes:  # length() in SQLite counts characters too
                raise InvalidNameError(
                    f"a telemetry event of {len(payload)} bytes is over the limit of "
                    f"{self.max_event_bytes}",
                    field=f"events[{i}]",
                    value=len(payload),
                )
            candidates.append((session_id, kind, name, now, payload, tenant, data.get("event_id")))
        with self._db.lock, self._db.tx() as c:
            seen: set[str] = set()
            rows: list[tuple[Any, ...]] = []
            for *row, event_id in candidates:
                if isinstance(event_id, str):
                    if event_id in seen or self._known(c, event_id, tenant):
                        continue
                    seen.add(event_id)
                rows.append(tuple(row))
            c.executemany(
                "INSERT INTO telemetry (session_id, event, event_name, received_at, payload,"
                " tenant) VALUES (?,?,?,?,?,?)",
                rows,
            )
            self._bytes += sum(len(r[4]) for r in rows)
            newest = c.execute("SELECT MAX(id) FROM telemetry").fetchone()[0]
            cutoff = (newest or 0) - self.max_events  # an empty batch into an empty table: None
            if self._bytes > self.max_bytes:  # drop the oldest until the rest fits
                excess = self._bytes - self.max_bytes
                for row in c.execute("SELECT id, length(payload) FROM telemetry ORDER BY id"):
                    if excess <= 0:
                        break
                    excess -= row[1]
                    cutoff = max(cutoff, row[0])
            if cutoff > 0:
                gone = c.execute(
                    "SELECT COALESCE(SUM(length(payload)), 0) FROM telemetry WHERE id <= ?",
                    (cutoff,),
                ).fetchone()[0]
                c.execute("DELETE FROM telemetry WHERE id <= ?", (cutoff,))
                self._bytes -= int(gone)
        return len(rows)

    @staticmethod
    def _known(c: Any, event_id: str, tenant: str | None) -> bool:
        found = c.execute(
            "SELECT 1 FROM telemetry WHERE json_extract(payload, '$.event_id') = ?"
            " AND tenant IS ? LIMIT 1",
            (event_id, tenant),
        ).fetchone()
        return found is not None

    def query(
        self,
        *,
        session_id: str | None = None,
        event_name: str | None = None,
        limit: int = 100,
        tenant: str | None = None,
    ) -> list[dict[str, Any]]:
        """The latest ``limit`` events (oldest first) matching the filters (only those
        ``tenant`` posted, when given).

        ``event_name`` matches a GENERIC_EVENT's ``event_name`` or any event's type
        (``SESSION_START``, ...). Each dict is the event as received plus ``session_id``.
        """
        check_page(limit, 0)
        where, args = [], []
        if tenant is not None:
            where.append("tenant=?")
            args.append(tenant)
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
