"""Sessions, their samplers and telemetry: the session-scoped part of the checkpoint store."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from tinkjax.types import (
    GetSamplerResponse,
    GetSessionResponse,
    ListSessionsResponse,
)

from ._store_db import _StoreBase
from ._store_errors import (
    DuplicateIdError,
    InvalidNameError,
    UnknownSamplerError,
    UnknownSessionError,
)
from ._store_util import _check_page, _dt, _iso, _json, _now, _validate_id


class _SessionsMixin(_StoreBase):
    """Sessions (with their sequence counters), samplers and telemetry events."""

    # -- sessions ---------------------------------------------------------------------------

    def add_session(
        self,
        session_id: str,
        *,
        tags: Sequence[str],
        user_metadata: Mapping[str, Any] | None,
        sdk_version: str,
        display_name: str | None = None,
    ) -> None:
        """Record a new session.

        Raises:
            DuplicateIdError: when ``session_id`` exists.
        """
        _validate_id(session_id, "session_id")
        now = _iso(_now())
        meta = None if user_metadata is None else _json(dict(user_metadata))
        with self._lock, self._tx() as c:
            try:
                c.execute(
                    "INSERT INTO sessions (session_id, tags, user_metadata, display_name,"
                    " sdk_version, created_at, last_heartbeat) VALUES (?,?,?,?,?,?,?)",
                    (session_id, _json(list(tags)), meta, display_name, sdk_version, now, now),
                )
            except sqlite3.IntegrityError:
                raise DuplicateIdError("session_id", session_id) from None

    def has_session(self, session_id: str) -> bool:
        """Whether ``session_id`` is known."""
        with self._lock:
            return (
                self._conn.execute(
                    "SELECT 1 FROM sessions WHERE session_id=?", (session_id,)
                ).fetchone()
                is not None
            )

    def heartbeat(self, session_id: str) -> None:
        """Record a heartbeat.

        Raises:
            UnknownSessionError: when ``session_id`` is unknown.
        """
        with self._lock, self._tx() as c:
            cur = c.execute(
                "UPDATE sessions SET last_heartbeat=? WHERE session_id=?",
                (_iso(_now()), session_id),
            )
            if cur.rowcount == 0:
                raise UnknownSessionError(session_id)

    def finish_session(
        self, session_id: str, *, reason: str = "success", detail: str | None = None
    ) -> None:
        """Mark a session finished (idempotent; the last call's reason wins).

        Raises:
            UnknownSessionError: when ``session_id`` is unknown.
        """
        with self._lock, self._tx() as c:
            cur = c.execute(
                "UPDATE sessions SET finished_at=?, finish_reason=?, finish_detail=?"
                " WHERE session_id=?",
                (_iso(_now()), reason, detail, session_id),
            )
            if cur.rowcount == 0:
                raise UnknownSessionError(session_id)

    def session_status(self, session_id: str) -> dict[str, Any]:
        """Bookkeeping of one session: created_at, last_heartbeat, finished_at, finish_reason, ...

        Raises:
            UnknownSessionError: when ``session_id`` is unknown.
        """
        with self._lock:
            row = self._require_session(session_id)
        return {
            "session_id": row["session_id"],
            "tags": json.loads(row["tags"]),
            "sdk_version": row["sdk_version"],
            "created_at": _dt(row["created_at"]),
            "last_heartbeat": _dt(row["last_heartbeat"]),
            "finished_at": _dt(row["finished_at"]),
            "finish_reason": row["finish_reason"],
            "finish_detail": row["finish_detail"],
        }

    def list_sessions(self, *, limit: int = 20, offset: int = 0) -> ListSessionsResponse:
        """Session ids, newest first."""
        _check_page(limit, offset)
        with self._lock:
            rows = self._conn.execute(
                "SELECT session_id FROM sessions ORDER BY rowid DESC LIMIT ? OFFSET ?",
                (limit, offset),
            ).fetchall()
        return ListSessionsResponse(sessions=[r["session_id"] for r in rows])

    def get_session(self, session_id: str) -> GetSessionResponse:
        """A session with its training run ids and sampler ids (both in creation order).

        Raises:
            UnknownSessionError: when ``session_id`` is unknown.
        """
        with self._lock:
            row = self._require_session(session_id)
            runs = self._conn.execute(
                "SELECT model_id FROM training_runs WHERE session_id=? ORDER BY rowid",
                (session_id,),
            ).fetchall()
            samplers = self._conn.execute(
                "SELECT sampler_id FROM samplers WHERE session_id=? ORDER BY rowid",
                (session_id,),
            ).fetchall()
        meta = row["user_metadata"]
        return GetSessionResponse(
            training_run_ids=[r["model_id"] for r in runs],
            sampler_ids=[r["sampler_id"] for r in samplers],
            user_metadata=None if meta is None else json.loads(meta),
            display_name=row["display_name"],
        )

    def _next_seq(self, session_id: str, column: str) -> int:
        with self._lock, self._tx() as c:
            row = self._require_session(session_id)
            value = int(row[column])
            c.execute(f"UPDATE sessions SET {column}=? WHERE session_id=?", (value + 1, session_id))
        return value

    def next_model_seq(self, session_id: str) -> int:
        """The next model sequence number of a session (0, 1, 2, ...; persisted).

        Raises:
            UnknownSessionError: when ``session_id`` is unknown.
        """
        return self._next_seq(session_id, "next_model_seq")

    def next_sampler_seq(self, session_id: str) -> int:
        """The next sampler sequence number of a session (0, 1, 2, ...; persisted).

        Raises:
            UnknownSessionError: when ``session_id`` is unknown.
        """
        return self._next_seq(session_id, "next_sampler_seq")

    # -- samplers ---------------------------------------------------------------------------

    def add_sampler(
        self,
        sampler_id: str,
        *,
        base_model: str,
        model_path: str | None = None,
        session_id: str | None,
    ) -> GetSamplerResponse:
        """Record a sampler (sampling session).

        Raises:
            UnknownSessionError: when ``session_id`` is given and unknown.
            DuplicateIdError: when ``sampler_id`` exists.
        """
        _validate_id(sampler_id, "sampler_id")
        with self._lock, self._tx() as c:
            if session_id is not None:
                self._require_session(session_id)
            try:
                c.execute(
                    "INSERT INTO samplers (sampler_id, session_id, base_model, model_path,"
                    " created_at) VALUES (?,?,?,?,?)",
                    (sampler_id, session_id, base_model, model_path, _iso(_now())),
                )
            except sqlite3.IntegrityError:
                raise DuplicateIdError("sampler_id", sampler_id) from None
        return GetSamplerResponse(
            sampler_id=sampler_id, base_model=base_model, model_path=model_path
        )

    def get_sampler(self, sampler_id: str) -> GetSamplerResponse:
        """One sampler.

        Raises:
            UnknownSamplerError: when ``sampler_id`` is unknown.
        """
        with self._lock:
            row = self._conn.execute(
                "SELECT * FROM samplers WHERE sampler_id=?", (sampler_id,)
            ).fetchone()
        if row is None:
            raise UnknownSamplerError(sampler_id)
        return GetSamplerResponse(
            sampler_id=row["sampler_id"], base_model=row["base_model"], model_path=row["model_path"]
        )

    def list_samplers(self, session_id: str) -> list[GetSamplerResponse]:
        """A session's samplers in creation order.

        Raises:
            UnknownSessionError: when ``session_id`` is unknown.
        """
        with self._lock:
            self._require_session(session_id)
            rows = self._conn.execute(
                "SELECT * FROM samplers WHERE session_id=? ORDER BY rowid", (session_id,)
            ).fetchall()
        return [
            GetSamplerResponse(
                sampler_id=r["sampler_id"], base_model=r["base_model"], model_path=r["model_path"]
            )
            for r in rows
        ]

    # -- telemetry --------------------------------------------------------------------------

    def add_telemetry(self, session_id: str | None, events: Sequence[Any]) -> int:
        """Keep telemetry events (mappings or wire Structs); returns how many were stored."""
        now = _iso(_now())
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
        with self._lock, self._tx() as c:
            c.executemany(
                "INSERT INTO telemetry (session_id, event, event_name, received_at, payload)"
                " VALUES (?,?,?,?,?)",
                rows,
            )
            c.execute(
                "DELETE FROM telemetry WHERE id <= (SELECT MAX(id) FROM telemetry) - ?",
                (self.max_telemetry_events,),
            )
        return len(rows)

    def query_telemetry(
        self, *, session_id: str | None = None, event_name: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """The latest ``limit`` events (oldest first) matching the filters.

        ``event_name`` matches a GENERIC_EVENT's ``event_name`` or any event's type
        (``SESSION_START``, ...). Each dict is the event as received plus ``session_id``.
        """
        _check_page(limit, 0)
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
        with self._lock:
            rows = self._conn.execute(sql, (*args, limit)).fetchall()
        out = []
        for r in reversed(rows):
            ev: dict[str, Any] = json.loads(r["payload"])
            ev.setdefault("session_id", r["session_id"])
            out.append(ev)
        return out
