"""Sessions and their samplers: the session-scoped part of the store."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any

from tinkjax.types import GetSamplerResponse, GetSessionResponse, ListSessionsResponse

from ._store_db import Database
from ._store_errors import DuplicateIdError, UnknownSamplerError, UnknownSessionError
from ._store_util import check_page, iso, parse_dt, to_json, utc_now, validate_id

__all__ = ["Sessions"]


class Sessions:
    """Sessions (with their sequence counters) and samplers, over the store's database.

    Args:
        db: the store's database.
    """

    def __init__(self, db: Database) -> None:
        self._db = db

    # -- sessions ---------------------------------------------------------------------------

    def add(
        self,
        session_id: str,
        *,
        tags: Sequence[str],
        user_metadata: Mapping[str, Any] | None,
        sdk_version: str,
        display_name: str | None = None,
        tenant: str | None = None,
    ) -> None:
        """Record a new session, owned by ``tenant`` (see :mod:`tinkjax.server._auth`).

        Raises:
            DuplicateIdError: when ``session_id`` exists.
        """
        validate_id(session_id, "session_id")
        now = iso(utc_now())
        meta = None if user_metadata is None else to_json(dict(user_metadata))
        with self._db.lock, self._db.tx() as c:
            try:
                c.execute(
                    "INSERT INTO sessions (session_id, tags, user_metadata, display_name,"
                    " sdk_version, created_at, last_heartbeat, tenant) VALUES (?,?,?,?,?,?,?,?)",
                    (
                        session_id,
                        to_json(list(tags)),
                        meta,
                        display_name,
                        sdk_version,
                        now,
                        now,
                        tenant,
                    ),
                )
            except sqlite3.IntegrityError:
                raise DuplicateIdError("session_id", session_id) from None

    def has(self, session_id: str) -> bool:
        """Whether ``session_id`` is known."""
        with self._db.lock:
            return (
                self._db.one("SELECT 1 FROM sessions WHERE session_id=?", (session_id,)) is not None
            )

    def tenant_of(self, session_id: str) -> str | None:
        """The tenant owning ``session_id``; ``None`` when unknown or owned by no key."""
        with self._db.lock:
            row = self._db.one("SELECT tenant FROM sessions WHERE session_id=?", (session_id,))
        return None if row is None else row["tenant"]

    def sampler_tenant(self, sampler_id: str) -> str | None:
        """The tenant owning a sampler (through its session); ``None`` when unknown."""
        with self._db.lock:
            row = self._db.one(
                "SELECT s.tenant FROM samplers JOIN sessions s USING (session_id)"
                " WHERE sampler_id=?",
                (sampler_id,),
            )
        return None if row is None else row["tenant"]

    def _update(self, session_id: str, sql: str, args: tuple[Any, ...]) -> None:
        with self._db.lock, self._db.tx() as c:
            if c.execute(sql, (*args, session_id)).rowcount == 0:
                raise UnknownSessionError(session_id)

    def heartbeat(self, session_id: str) -> None:
        """Record a heartbeat.

        Raises:
            UnknownSessionError: when ``session_id`` is unknown.
        """
        self._update(
            session_id, "UPDATE sessions SET last_heartbeat=? WHERE session_id=?", (iso(utc_now()),)
        )

    def finish(
        self, session_id: str, *, reason: str = "success", detail: str | None = None
    ) -> None:
        """Mark a session finished (idempotent; the last call's reason wins).

        Raises:
            UnknownSessionError: when ``session_id`` is unknown.
        """
        self._update(
            session_id,
            "UPDATE sessions SET finished_at=?, finish_reason=?, finish_detail=? WHERE session_id=?",
            (iso(utc_now()), reason, detail),
        )

    def status(self, session_id: str) -> dict[str, Any]:
        """Bookkeeping of one session: created_at, last_heartbeat, finished_at, finish_reason, ...

        Raises:
            UnknownSessionError: when ``session_id`` is unknown.
        """
        with self._db.lock:
            row = self._db.session_row(session_id)
        return {
            "session_id": row["session_id"],
            "tags": json.loads(row["tags"]),
            "sdk_version": row["sdk_version"],
            "created_at": parse_dt(row["created_at"]),
            "last_heartbeat": parse_dt(row["last_heartbeat"]),
            "finished_at": parse_dt(row["finished_at"]),
            "finish_reason": row["finish_reason"],
            "finish_detail": row["finish_detail"],
        }

    def page(
        self, *, limit: int = 20, offset: int = 0, tenant: str | None = None
    ) -> ListSessionsResponse:
        """Session ids, newest first (only ``tenant``'s when given)."""
        check_page(limit, offset)
        where, args = ("WHERE tenant=?", (tenant,)) if tenant is not None else ("", ())
        with self._db.lock:
            rows = self._db.all(
                f"SELECT session_id FROM sessions {where} ORDER BY rowid DESC LIMIT ? OFFSET ?",
                (*args, limit, offset),
            )
        return ListSessionsResponse(sessions=[r["session_id"] for r in rows])

    def get(self, session_id: str) -> GetSessionResponse:
        """A session with its training run ids and sampler ids (both in creation order).

        Raises:
            UnknownSessionError: when ``session_id`` is unknown.
        """
        with self._db.lock:
            row = self._db.session_row(session_id)
            runs = self._db.all(
                "SELECT model_id FROM training_runs WHERE session_id=? ORDER BY rowid",
                (session_id,),
            )
            samplers = self._db.all(
                "SELECT sampler_id FROM samplers WHERE session_id=? ORDER BY rowid", (session_id,)
            )
        meta = row["user_metadata"]
        return GetSessionResponse(
            training_run_ids=[r["model_id"] for r in runs],
            sampler_ids=[r["sampler_id"] for r in samplers],
            user_metadata=None if meta is None else json.loads(meta),
            display_name=row["display_name"],
        )

    def _next_seq(self, session_id: str, column: str) -> int:
        with self._db.lock, self._db.tx() as c:
            value = int(self._db.session_row(session_id)[column])
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
        validate_id(sampler_id, "sampler_id")
        with self._db.lock, self._db.tx() as c:
            if session_id is not None:
                self._db.session_row(session_id)
            try:
                c.execute(
                    "INSERT INTO samplers (sampler_id, session_id, base_model, model_path,"
                    " created_at) VALUES (?,?,?,?,?)",
                    (sampler_id, session_id, base_model, model_path, iso(utc_now())),
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
        with self._db.lock:
            row = self._db.one("SELECT * FROM samplers WHERE sampler_id=?", (sampler_id,))
        if row is None:
            raise UnknownSamplerError(sampler_id)
        return _sampler_of(row)

    def has_sampler(self, sampler_id: str) -> bool:
        """Whether ``sampler_id`` is known."""
        with self._db.lock:
            return (
                self._db.one("SELECT 1 FROM samplers WHERE sampler_id=?", (sampler_id,)) is not None
            )

    def samplers(self, session_id: str) -> list[GetSamplerResponse]:
        """A session's samplers in creation order.

        Raises:
            UnknownSessionError: when ``session_id`` is unknown.
        """
        sql = "SELECT * FROM samplers WHERE session_id=? ORDER BY rowid"
        with self._db.lock:
            self._db.session_row(session_id)
            return [_sampler_of(r) for r in self._db.all(sql, (session_id,))]


def _sampler_of(row: sqlite3.Row) -> GetSamplerResponse:
    return GetSamplerResponse(
        sampler_id=row["sampler_id"], base_model=row["base_model"], model_path=row["model_path"]
    )
