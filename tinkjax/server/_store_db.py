"""The checkpoint store's SQLite connection, schema, crash repair and shared row lookups."""

from __future__ import annotations

import contextlib
import json
import shutil
import sqlite3
import threading
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

from tinkjax.types import Checkpoint

from ._store_errors import UnknownCheckpointError, UnknownSessionError, UnknownTrainingRunError
from ._store_util import _KIND_TYPE, _KINDS, _dt, _model_dir_name

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
    next_sampler_seq INTEGER NOT NULL DEFAULT 0
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
    payload TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS telemetry_session ON telemetry(session_id);
"""


class _StoreBase:
    """Connection, schema and file layout of :class:`~tinkjax.server._store.CheckpointStore`.

    Opening creates the schema and repairs what a crash left behind; the row lookups here are
    shared by the sessions, training-run and checkpoint parts (each called with the lock held).
    """

    def __init__(
        self, data_dir: Path, *, owner: str = "local", max_telemetry_events: int = 100_000
    ) -> None:
        self.data_dir = Path(data_dir)
        self.checkpoints_root = self.data_dir / "checkpoints"
        self.archives_root = self.data_dir / "archives"
        self.owner = owner
        self.max_telemetry_events = max_telemetry_events
        self.checkpoints_root.mkdir(parents=True, exist_ok=True)
        self.archives_root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._archive_lock = threading.Lock()
        # model_id -> (last request time, when it was last written): touches are persisted at
        # most once per _TOUCH_PERSIST_S so the per-request path does not fsync every time.
        self._touched: dict[str, tuple[datetime, float]] = {}
        self._closed = False
        self._conn = sqlite3.connect(
            self.data_dir / "meta.sqlite", check_same_thread=False, isolation_level=None
        )
        self._conn.row_factory = sqlite3.Row
        with self._lock:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute("PRAGMA busy_timeout=10000")
            with self._tx():
                for stmt in _SCHEMA.split(";"):
                    if stmt.strip():
                        self._conn.execute(stmt)
                self._conn.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
            self._recover()

    # -- plumbing ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (``BEGIN IMMEDIATE`` … ``COMMIT``); the caller holds the lock."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def _kind_dir(self, model_id: str, kind: str) -> Path:
        return self.checkpoints_root / _model_dir_name(model_id) / kind

    def _archive_dir(self, model_id: str, kind: str, name: str) -> Path:
        return self.archives_root / _model_dir_name(model_id) / kind / name

    def _recover(self) -> None:
        """Repair what a crash in the middle of a save or delete can leave (lock held)."""
        rows = self._conn.execute("SELECT model_id, kind, name FROM checkpoints").fetchall()
        known = {(_model_dir_name(r["model_id"]), r["kind"], r["name"]) for r in rows}
        for model_dir in self.checkpoints_root.iterdir():
            for kind in _KINDS:
                kdir = model_dir / kind
                if not kdir.is_dir():
                    continue
                for entry in sorted(kdir.iterdir()):
                    if entry.name.startswith(".tmp-"):
                        shutil.rmtree(entry, ignore_errors=True)
                    elif entry.name.startswith(".old-"):
                        name = entry.name[len(".old-") :].rsplit("-", 1)[0]
                        final = kdir / name
                        if not final.exists():
                            entry.rename(final)
                        else:
                            shutil.rmtree(entry, ignore_errors=True)
                for entry in kdir.iterdir():
                    if (
                        not entry.name.startswith(".")
                        and (model_dir.name, kind, entry.name) not in known
                    ):
                        shutil.rmtree(entry, ignore_errors=True)
        with self._tx():
            for r in rows:
                if not (self._kind_dir(r["model_id"], r["kind"]) / r["name"]).is_dir():
                    self._conn.execute(
                        "DELETE FROM checkpoints WHERE model_id=? AND kind=? AND name=?",
                        (r["model_id"], r["kind"], r["name"]),
                    )

    # -- shared row lookups (lock held) -----------------------------------------------------

    def _require_session(self, session_id: str) -> sqlite3.Row:
        row = self._conn.execute(
            "SELECT * FROM sessions WHERE session_id=?", (session_id,)
        ).fetchone()
        if row is None:
            raise UnknownSessionError(session_id)
        return row  # type: ignore[no-any-return]

    def _run_row(self, model_id: str) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self._conn.execute(
            "SELECT * FROM training_runs WHERE model_id=?", (model_id,)
        ).fetchone()
        return row

    def _require_run(self, model_id: str) -> sqlite3.Row:
        row = self._run_row(model_id)
        if row is None:
            raise UnknownTrainingRunError(model_id)
        return row

    def _checkpoint(self, row: sqlite3.Row) -> Checkpoint:
        meta = row["user_metadata"]
        return Checkpoint(
            checkpoint_id=f"{row['kind']}/{row['name']}",
            checkpoint_type=_KIND_TYPE[row["kind"]],  # type: ignore[arg-type]
            time=datetime.fromisoformat(row["time"]),
            tinker_path=f"tinker://{row['model_id']}/{row['kind']}/{row['name']}",
            size_bytes=row["size_bytes"],
            public=bool(row["public"]),
            user_metadata=None if meta is None else json.loads(meta),
            expires_at=_dt(row["expires_at"]),
        )

    def _ck_row(self, model_id: str, kind: str, name: str) -> sqlite3.Row:
        row: sqlite3.Row | None = self._conn.execute(
            "SELECT * FROM checkpoints WHERE model_id=? AND kind=? AND name=?",
            (model_id, kind, name),
        ).fetchone()
        if row is None:
            raise UnknownCheckpointError(f"tinker://{model_id}/{kind}/{name}")
        return row
