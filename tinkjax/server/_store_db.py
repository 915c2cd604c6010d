"""The store's one database object: the SQLite connection, its lock, schema and shared row lookups.

One connection serves every thread (``check_same_thread=False``), guarded by :attr:`Database.lock`;
the sessions, training-run and checkpoint parts of :class:`~tinkjax.server._store.Store` each hold
this object and run their statements under that lock.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from tinkjax.types import Checkpoint

from ._store_errors import UnknownCheckpointError, UnknownSessionError, UnknownTrainingRunError
from ._store_util import KIND_TYPE, LIVE, now_iso, parse_dt

__all__ = ["Database", "checkpoint_of"]

_SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    session_id TEXT PRIMARY KEY,
    tags TEXT NOT NULL,
    user_metadata TEXT,
    display_name TEXT,
    sdk_version TEXT NOT NULL,
    created_at TEXT NOT NULL,
    last_heartbeat TEXT NOT NULL,
    finished_at TEXT,
    finish_reason TEXT,
    finish_detail TEXT,
    next_model_seq INTEGER NOT NULL DEFAULT 0,
    next_sampler_seq INTEGER NOT NULL DEFAULT 0,
    tenant TEXT
);
CREATE TABLE IF NOT EXISTS training_runs (
    model_id TEXT PRIMARY KEY,
    session_id TEXT,
    base_model TEXT NOT NULL,
    is_lora INTEGER NOT NULL,
    lora_rank INTEGER,
    user_metadata TEXT,
    created_at TEXT NOT NULL,
    last_request_time TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS training_runs_session ON training_runs(session_id);
CREATE TABLE IF NOT EXISTS checkpoints (
    model_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    time TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    meta TEXT NOT NULL,
    user_metadata TEXT,
    expires_at TEXT,
    public INTEGER NOT NULL DEFAULT 0,
    version TEXT NOT NULL,
    PRIMARY KEY (model_id, kind, name)
);
CREATE INDEX IF NOT EXISTS checkpoints_time ON checkpoints(time);
CREATE TABLE IF NOT EXISTS samplers (
    sampler_id TEXT PRIMARY KEY,
    session_id TEXT,
    base_model TEXT NOT NULL,
    model_path TEXT,
    created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS samplers_session ON samplers(session_id);
CREATE TABLE IF NOT EXISTS telemetry (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id TEXT,
    event TEXT,
    event_name TEXT,
    received_at TEXT NOT NULL,
    payload TEXT NOT NULL,
    tenant TEXT
);
CREATE INDEX IF NOT EXISTS telemetry_session ON telemetry(session_id);
"""


class Database:
    """``meta.sqlite`` (WAL, ``synchronous=FULL``) behind one re-entrant lock.

    Every method below except :meth:`close` expects the caller to hold :attr:`lock`, so that a
    part can run several statements as one atomic step.

    Args:
        path: the database file (created with its schema when missing).
    """

    def __init__(self, path: Path) -> None:
        self.lock = threading.RLock()
        self.closed = False
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._conn.row_factory = sqlite3.Row
        with self.lock:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute("PRAGMA busy_timeout=10000")
            with self.tx():
                for stmt in _SCHEMA.split(";"):
                    if stmt.strip():
                        self._conn.execute(stmt)
                self._add_tenant_columns()
                self._conn.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")

    def _add_tenant_columns(self) -> None:
        """Give a database from before API keys its ``tenant`` columns (its rows keep
        ``NULL``: no key owns them) and the indexes on them."""
        for table in ("sessions", "telemetry"):
            columns = {r["name"] for r in self._conn.execute(f"PRAGMA table_info({table})")}
            if "tenant" not in columns:
                self._conn.execute(f"ALTER TABLE {table} ADD COLUMN tenant TEXT")
            self._conn.execute(f"CREATE INDEX IF NOT EXISTS {table}_tenant ON {table}(tenant)")

    def close(self) -> None:
        """Close the connection (idempotent)."""
        with self.lock:
            if not self.closed:
                self._conn.close()
                self.closed = True

    @contextlib.contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (``BEGIN IMMEDIATE`` … ``COMMIT``, ``ROLLBACK`` on an error)."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def execute(self, sql: str, args: Iterable[Any] = ()) -> sqlite3.Cursor:
        """Run one statement (outside :meth:`tx` it commits at once)."""
        return self._conn.execute(sql, tuple(args))

    def one(self, sql: str, args: Iterable[Any] = ()) -> sqlite3.Row | None:
        """The first row of a query, or ``None``."""
        row: sqlite3.Row | None = self._conn.execute(sql, tuple(args)).fetchone()
        return row

    def all(self, sql: str, args: Iterable[Any] = ()) -> list[sqlite3.Row]:
        """Every row of a query."""
        return list(self._conn.execute(sql, tuple(args)).fetchall())

    # -- row lookups shared by the parts ----------------------------------------------------

    def session_row(self, session_id: str) -> sqlite3.Row:
        """The session's row.

        Raises:
            UnknownSessionError: when ``session_id`` is unknown.
        """
        row = self.one("SELECT * FROM sessions WHERE session_id=?", (session_id,))
        if row is None:
            raise UnknownSessionError(session_id)
        return row

    def run_row(self, model_id: str) -> sqlite3.Row | None:
        """The training run's row, ``None`` when unknown."""
        return self.one("SELECT * FROM training_runs WHERE model_id=?", (model_id,))

    def require_run(self, model_id: str) -> sqlite3.Row:
        """The training run's row.

        Raises:
            UnknownTrainingRunError: when ``model_id`` is unknown.
        """
        row = self.run_row(model_id)
        if row is None:
            raise UnknownTrainingRunError(model_id)
        return row

    def checkpoint_row(self, model_id: str, kind: str, name: str) -> sqlite3.Row:
        """The checkpoint's row (an expired checkpoint is gone, even before it is purged).

        Raises:
            UnknownCheckpointError: no such checkpoint.
        """
        row = self.one(
            f"SELECT * FROM checkpoints WHERE model_id=? AND kind=? AND name=? AND {LIVE}",
            (model_id, kind, name, now_iso()),
        )
        if row is None:
            raise UnknownCheckpointError(f"tinker://{model_id}/{kind}/{name}")
        return row


def checkpoint_of(row: sqlite3.Row) -> Checkpoint:
    """The wire :class:`Checkpoint` of a ``checkpoints`` row."""
    meta = row["user_metadata"]
    return Checkpoint(
        checkpoint_id=f"{row['kind']}/{row['name']}",
        checkpoint_type=KIND_TYPE[row["kind"]],  # type: ignore[arg-type]
        time=datetime.fromisoformat(row["time"]),
        tinker_path=f"tinker://{row['model_id']}/{row['kind']}/{row['name']}",
        size_bytes=row["size_bytes"],
        public=bool(row["public"]),
        user_metadata=None if meta is None else json.loads(meta),
        expires_at=parse_dt(row["expires_at"]),
    )
