"""Durable state of the local backend: sessions, training runs, checkpoints, samplers, telemetry.

Layout under ``data_dir``::

    meta.sqlite                                   metadata (SQLite, WAL)
    checkpoints/<model dir>/<kind>/<name>/...     checkpoint files (kind: weights | sampler_weights)
    archives/<model dir>/<kind>/<name>/<version>.tar.gz   cached archives of checkpoint folders

``<model dir>`` is the model id percent-encoded (``:`` → ``%3A``, ``.`` → ``%2E``), so every id is a
valid, dot-free file name. A checkpoint folder is written as ``.tmp-<name>-<hex>`` next to its final
place and renamed into place; an overwrite first renames the old folder to ``.old-<name>-<hex>``.
Opening a store repairs what a crash can leave behind: temp folders are removed, a lone ``.old``
folder is put back, folders without a row and rows without a folder are dropped.

One SQLite connection serves every thread, guarded by a lock; slow file work (writing checkpoint
files, building archives) runs outside the lock.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, get_args
from urllib.parse import quote

import msgspec

from tinkjax.errors import TinkerError, WireFormatError
from tinkjax.types import (
    AdamOptimizerConfig,
    Checkpoint,
    CheckpointsListResponse,
    Cursor,
    GetSamplerResponse,
    GetSessionResponse,
    ListSessionsResponse,
    OptimizerConfig,
    TrainingRun,
    TrainingRunsResponse,
    WeightsInfoResponse,
    parse_tinker_path,
)

from ._archive import fsync_dir, make_tar_gz

__all__ = [
    "CheckpointKind",
    "CheckpointStore",
    "DuplicateIdError",
    "InvalidNameError",
    "StoreError",
    "UnknownCheckpointError",
    "UnknownSamplerError",
    "UnknownSessionError",
    "UnknownTrainingRunError",
    "parse_checkpoint_id",
    "validate_name",
]

CheckpointKind = Literal["weights", "sampler_weights"]
_KINDS: tuple[str, ...] = get_args(CheckpointKind)
_KIND_TYPE = {"weights": "training", "sampler_weights": "sampler"}
_NAME_RE = re.compile(r"[A-Za-z0-9._-]+")
_MAX_NAME = 200
_SCHEMA_VERSION = 1
_TOUCH_PERSIST_S = 1.0


# ----------------------------------------------------------------------------------------- errors


class StoreError(TinkerError):
    """Base class of the errors :class:`CheckpointStore` raises on purpose."""


class _UnknownError(StoreError, KeyError):
    what = "id"

    def __init__(self, key: str) -> None:
        super().__init__(f"unknown {self.what} {key!r}")
        self.key = key

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class UnknownSessionError(_UnknownError):
    """No session with this id (``.key``)."""

    what = "session_id"


class UnknownTrainingRunError(_UnknownError):
    """No training run (model) with this id (``.key``)."""

    what = "model_id"


class UnknownCheckpointError(_UnknownError):
    """No checkpoint with this id or tinker path (``.key``)."""

    what = "checkpoint"


class UnknownSamplerError(_UnknownError):
    """No sampler with this id (``.key``)."""

    what = "sampler_id"


class DuplicateIdError(StoreError, ValueError):
    """A session, training run or sampler with this id already exists (``.field``, ``.value``)."""

    def __init__(self, field: str, value: str) -> None:
        super().__init__(f"{field}: {value!r} already exists")
        self.field = field
        self.value = value


class InvalidNameError(StoreError, WireFormatError):
    """A checkpoint name, kind, file name or id that is not allowed (``.field``, ``.value``)."""

    def __init__(self, message: str, *, field: str, value: object) -> None:
        super().__init__(message, field=field)
        self.value = value


# -------------------------------------------------------------------------------------- helpers


def validate_name(name: object, *, field: str = "name") -> str:
    """Check a checkpoint name (or file-name segment): ``[A-Za-z0-9._-]+``, no ``..``, no leading dot.

    Raises:
        InvalidNameError: naming ``field`` and the value.
    """
    if (
        not isinstance(name, str)
        or not _NAME_RE.fullmatch(name)
        or ".." in name
        or name.startswith(".")
        or len(name) > _MAX_NAME
    ):
        raise InvalidNameError(
            f"{name!r} is not a valid name: use 1-{_MAX_NAME} characters from [A-Za-z0-9._-], "
            "not starting with '.' and without '..'",
            field=field,
            value=name,
        )
    return name


def _validate_kind(kind: object) -> CheckpointKind:
    if kind not in _KINDS:
        raise InvalidNameError(
            f"{kind!r} is not a checkpoint kind; expected one of {list(_KINDS)}",
            field="kind",
            value=kind,
        )
    return kind  # type: ignore[return-value]


def _validate_id(value: object, field: str) -> str:
    if not isinstance(value, str) or not value or "/" in value:
        raise InvalidNameError(
            f"{value!r} is not a valid id (a non-empty string without '/')",
            field=field,
            value=value,
        )
    return value


def parse_checkpoint_id(checkpoint_id: str) -> tuple[CheckpointKind, str]:
    """Split ``weights/<name>`` or ``sampler_weights/<name>`` into kind and name.

    Raises:
        InvalidNameError: naming ``checkpoint_id`` when it has another shape.
    """
    kind, sep, name = checkpoint_id.partition("/") if isinstance(checkpoint_id, str) else ("", "", "")
    if not sep:
        raise InvalidNameError(
            f"{checkpoint_id!r} must look like weights/<name> or sampler_weights/<name>",
            field="checkpoint_id",
            value=checkpoint_id,
        )
    return _validate_kind(kind), validate_name(name, field="checkpoint_id")


def _model_dir_name(model_id: str) -> str:
    return quote(model_id, safe="").replace(".", "%2E")


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(dt: datetime) -> str:
    return dt.isoformat(timespec="microseconds")


def _dt(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


def _json(value: Any) -> str:
    return json.dumps(msgspec.to_builtins(value), sort_keys=True)


def _check_page(limit: int, offset: int) -> None:
    if not isinstance(limit, int) or limit < 0:
        raise InvalidNameError(f"{limit!r} must be an int >= 0", field="limit", value=limit)
    if not isinstance(offset, int) or offset < 0:
        raise InvalidNameError(f"{offset!r} must be an int >= 0", field="offset", value=offset)


def _expires(now: datetime, ttl_seconds: int | None) -> str | None:
    if ttl_seconds is None:
        return None
    if not isinstance(ttl_seconds, int) or isinstance(ttl_seconds, bool) or ttl_seconds < 0:
        raise InvalidNameError(
            f"{ttl_seconds!r} must be null or an int >= 0", field="ttl_seconds", value=ttl_seconds
        )
    return _iso(now + timedelta(seconds=ttl_seconds))


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


# ---------------------------------------------------------------------------------------- store


class CheckpointStore:
    """Sessions, training runs, checkpoints, samplers and telemetry, kept under ``data_dir``.

    Thread-safe: every method may be called from any thread. Methods block on disk I/O;
    :meth:`save_checkpoint`, :meth:`read_checkpoint` and :meth:`archive_path` can take a while for
    large checkpoints, so call them from a worker thread (``asyncio.to_thread``), not the event
    loop. A new store opened on the same ``data_dir`` (after a restart, once the old one is
    closed) sees everything the old one committed; two live stores on one ``data_dir`` are not
    supported (opening one cleans up the other's in-progress writes).

    Args:
        data_dir: folder for ``meta.sqlite``, ``checkpoints/`` and ``archives/`` (created).
        owner: the ``model_owner`` reported for training runs.
        max_telemetry_events: the most telemetry events kept; the oldest are dropped beyond it.
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

    def close(self) -> None:
        """Persist pending touches and close the database (idempotent); the store is unusable after."""
        with self._lock:
            if self._closed:
                return
            self._flush_touches()
            self._conn.close()
            self._closed = True

    def __enter__(self) -> CheckpointStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

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
                        name = entry.name[len(".old-"):].rsplit("-", 1)[0]
                        final = kdir / name
                        if not final.exists():
                            entry.rename(final)
                        else:
                            shutil.rmtree(entry, ignore_errors=True)
                for entry in kdir.iterdir():
                    if not entry.name.startswith(".") and (model_dir.name, kind, entry.name) not in known:
                        shutil.rmtree(entry, ignore_errors=True)
        with self._tx():
            for r in rows:
                if not (self._kind_dir(r["model_id"], r["kind"]) / r["name"]).is_dir():
                    self._conn.execute(
                        "DELETE FROM checkpoints WHERE model_id=? AND kind=? AND name=?",
                        (r["model_id"], r["kind"], r["name"]),
                    )

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

    def _require_session(self, session_id: str) -> sqlite3.Row:
        row = self._conn.execute(
            "SELECT * FROM sessions WHERE session_id=?", (session_id,)
        ).fetchone()
        if row is None:
            raise UnknownSessionError(session_id)
        return row  # type: ignore[no-any-return]

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
                "SELECT session_id FROM sessions ORDER BY rowid DESC"
                " LIMIT ? OFFSET ?",
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
            c.execute(
                f"UPDATE sessions SET {column}=? WHERE session_id=?", (value + 1, session_id)
            )
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

    # -- training runs ----------------------------------------------------------------------

    def add_training_run(
        self,
        model_id: str,
        *,
        base_model: str,
        is_lora: bool,
        lora_rank: int | None,
        session_id: str | None,
        user_metadata: Mapping[str, str] | None = None,
    ) -> TrainingRun:
        """Record a new training run (a model).

        Raises:
            UnknownSessionError: when ``session_id`` is given and unknown.
            DuplicateIdError: when ``model_id`` exists.
        """
        _validate_id(model_id, "model_id")
        now = _iso(_now())
        meta = None if user_metadata is None else _json(dict(user_metadata))
        with self._lock:
            with self._tx() as c:
                if session_id is not None:
                    self._require_session(session_id)
                try:
                    c.execute(
                        "INSERT INTO training_runs (model_id, session_id, base_model, is_lora,"
                        " lora_rank, user_metadata, created_at, last_request_time)"
                        " VALUES (?,?,?,?,?,?,?,?)",
                        (model_id, session_id, base_model, int(is_lora), lora_rank, meta, now, now),
                    )
                except sqlite3.IntegrityError:
                    raise DuplicateIdError("model_id", model_id) from None
            return self._training_run(model_id)

    def has_training_run(self, model_id: str) -> bool:
        """Whether ``model_id`` is known."""
        with self._lock:
            return self._run_row(model_id) is not None

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

    def _training_run(self, model_id: str, row: sqlite3.Row | None = None) -> TrainingRun:
        row = row if row is not None else self._require_run(model_id)
        last: dict[str, Checkpoint | None] = {}
        for kind in _KINDS:
            ck = self._conn.execute(
                "SELECT * FROM checkpoints WHERE model_id=? AND kind=?"
                " ORDER BY time DESC, rowid DESC LIMIT 1",
                (model_id, kind),
            ).fetchone()
            last[kind] = None if ck is None else self._checkpoint(ck)
        meta = row["user_metadata"]
        return TrainingRun(
            training_run_id=row["model_id"],
            base_model=row["base_model"],
            model_owner=self.owner,
            is_lora=bool(row["is_lora"]),
            last_request_time=max(
                datetime.fromisoformat(row["last_request_time"]),
                self._touched.get(model_id, (datetime.min.replace(tzinfo=UTC), 0.0))[0],
            ),
            lora_rank=row["lora_rank"],
            last_checkpoint=last["weights"],
            last_sampler_checkpoint=last["sampler_weights"],
            user_metadata=None if meta is None else json.loads(meta),
        )

    def get_training_run(self, model_id: str) -> TrainingRun:
        """One training run, with its latest training and sampler checkpoints.

        Raises:
            UnknownTrainingRunError: when ``model_id`` is unknown.
        """
        with self._lock:
            return self._training_run(model_id)

    def list_training_runs(self, *, limit: int = 20, offset: int = 0) -> TrainingRunsResponse:
        """Training runs, newest first, with a cursor (offset, limit, total_count)."""
        _check_page(limit, offset)
        with self._lock:
            total = self._conn.execute("SELECT COUNT(*) FROM training_runs").fetchone()[0]
            rows = self._conn.execute(
                "SELECT * FROM training_runs ORDER BY rowid DESC"
                " LIMIT ? OFFSET ?",
                (limit, offset),
            ).fetchall()
            runs = [self._training_run(r["model_id"], r) for r in rows]
        return TrainingRunsResponse(
            training_runs=runs, cursor=Cursor(offset=offset, limit=limit, total_count=total)
        )

    def touch_training_run(self, model_id: str) -> None:
        """Set a run's ``last_request_time`` to now.

        Reads see it at once; it is written to disk at most once a second per run (and on
        :meth:`close`), so calling this on every request is cheap.

        Raises:
            UnknownTrainingRunError: when ``model_id`` is unknown.
        """
        now = _now()
        tick = time.monotonic()
        with self._lock:
            seen = self._touched.get(model_id)
            if seen is not None and tick - seen[1] < _TOUCH_PERSIST_S:
                self._touched[model_id] = (now, seen[1])
                return
            with self._tx() as c:
                cur = c.execute(
                    "UPDATE training_runs SET last_request_time=? WHERE model_id=?",
                    (_iso(now), model_id),
                )
                if cur.rowcount == 0:
                    raise UnknownTrainingRunError(model_id)
            self._touched[model_id] = (now, tick)

    def _flush_touches(self) -> None:
        """Write every in-memory ``last_request_time`` (lock held)."""
        with self._tx() as c:
            c.executemany(
                "UPDATE training_runs SET last_request_time=? WHERE model_id=?",
                [(_iso(t), m) for m, (t, _) in self._touched.items()],
            )
        self._touched.clear()

    # -- checkpoints ------------------------------------------------------------------------

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

    def save_checkpoint(
        self,
        model_id: str,
        kind: CheckpointKind,
        name: str,
        files: Mapping[str, bytes],
        *,
        meta: Mapping[str, Any],
        user_metadata: Mapping[str, str] | None = None,
        ttl_seconds: int | None = None,
    ) -> Checkpoint:
        """Write a checkpoint folder atomically and record it; an existing one is replaced.

        Args:
            model_id: the training run it belongs to (must exist).
            kind: ``weights`` (training state) or ``sampler_weights``.
            name: ``[A-Za-z0-9._-]+``, no ``..``, no leading dot.
            files: relative file name (``/``-separated segments, each a valid name) → bytes.
            meta: JSON-able metadata, given back by :meth:`checkpoint_dir`; keys ``base_model``,
                ``is_lora``, ``lora_rank``, ``train_unembed``, ``train_mlp``, ``train_attn`` and
                ``optimizer_config`` feed :meth:`weights_info`.
            user_metadata: reported in the checkpoint listing.
            ttl_seconds: sets ``expires_at``; :meth:`purge_expired` deletes expired checkpoints.

        Raises:
            InvalidNameError: a bad kind, name or file name.
            UnknownTrainingRunError: when ``model_id`` is unknown.
        """
        kind = _validate_kind(kind)
        validate_name(name)
        _expires(_now(), ttl_seconds)
        rels: list[tuple[str, bytes]] = []
        for rel, data in files.items():
            if not isinstance(rel, str) or not rel:
                raise InvalidNameError(f"{rel!r} is not a file name", field="files", value=rel)
            for seg in rel.split("/"):
                validate_name(seg, field=f"files[{rel!r}]")
            if not isinstance(data, bytes | bytearray | memoryview):
                raise InvalidNameError(
                    f"file {rel!r} holds {type(data).__name__}, not bytes",
                    field=f"files[{rel!r}]",
                    value=type(data).__name__,
                )
            rels.append((rel, bytes(data)))
        names = {rel for rel, _ in rels}
        for rel in names:
            parts = rel.split("/")
            for i in range(1, len(parts)):
                if "/".join(parts[:i]) in names:
                    raise InvalidNameError(
                        f"{rel!r} is inside {'/'.join(parts[:i])!r}, which is a file",
                        field=f"files[{rel!r}]",
                        value=rel,
                    )
        meta_json = _json(dict(meta))
        user_json = None if user_metadata is None else _json(dict(user_metadata))
        with self._lock:
            self._require_run(model_id)
        kdir = self._kind_dir(model_id, kind)
        kdir.mkdir(parents=True, exist_ok=True)
        tmp = kdir / f".tmp-{name}-{uuid.uuid4().hex}"
        try:
            tmp.mkdir()
            for rel, data in rels:
                path = tmp / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                with open(path, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
            for d in sorted({(tmp / rel).parent for rel, _ in rels} | {tmp}, reverse=True):
                fsync_dir(d)
            size = sum(len(d) for _, d in rels)
            now = _now()
            expires = _expires(now, ttl_seconds)
            final = kdir / name
            old: Path | None = None
            with self._lock:
                self._require_run(model_id)
                with self._tx() as c:
                    c.execute(
                        "INSERT INTO checkpoints (model_id, kind, name, time, size_bytes, meta,"
                        " user_metadata, expires_at, public, version)"
                        " VALUES (?,?,?,?,?,?,?,?,0,?)"
                        " ON CONFLICT (model_id, kind, name) DO UPDATE SET time=excluded.time,"
                        " size_bytes=excluded.size_bytes, meta=excluded.meta,"
                        " user_metadata=excluded.user_metadata, expires_at=excluded.expires_at,"
                        " version=excluded.version",
                        (model_id, kind, name, _iso(now), size, meta_json, user_json, expires,
                         uuid.uuid4().hex),
                    )
                    if final.exists():
                        old = kdir / f".old-{name}-{uuid.uuid4().hex}"
                        final.rename(old)
                    try:
                        tmp.rename(final)
                    except BaseException:
                        if old is not None:
                            old.rename(final)
                            old = None
                        raise
                    fsync_dir(kdir)
                row = self._ck_row(model_id, kind, name)
                shutil.rmtree(self._archive_dir(model_id, kind, name), ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self._checkpoint(row)

    def _resolve(self, tinker_path: str) -> tuple[str, str, str]:
        parsed = parse_tinker_path(tinker_path)
        if parsed.kind not in _KINDS:
            raise UnknownCheckpointError(tinker_path)
        return parsed.training_run_id, parsed.kind, parsed.name

    def checkpoint_dir(self, tinker_path: str) -> tuple[Path, dict[str, Any]]:
        """The folder and ``meta`` of ``tinker://{model_id}/{weights|sampler_weights}/{name}``.

        The folder stays valid until the checkpoint is overwritten or deleted.

        Raises:
            WireFormatError: a malformed path.
            UnknownCheckpointError: no such checkpoint.
        """
        model_id, kind, name = self._resolve(tinker_path)
        with self._lock:
            row = self._ck_row(model_id, kind, name)
            meta: dict[str, Any] = json.loads(row["meta"])
        return self._kind_dir(model_id, kind) / name, meta

    def read_checkpoint(self, tinker_path: str) -> tuple[dict[str, bytes], dict[str, Any]]:
        """Every file (relative ``/``-separated name → bytes) and the ``meta`` of a checkpoint.

        Read under the store's lock, so a concurrent overwrite or delete cannot tear it.

        Raises:
            WireFormatError: a malformed path.
            UnknownCheckpointError: no such checkpoint.
        """
        model_id, kind, name = self._resolve(tinker_path)
        with self._lock:
            row = self._ck_row(model_id, kind, name)
            folder = self._kind_dir(model_id, kind) / name
            files = {
                p.relative_to(folder).as_posix(): p.read_bytes()
                for p in sorted(folder.rglob("*"))
                if p.is_file() and not p.is_symlink()
            }
            meta: dict[str, Any] = json.loads(row["meta"])
        return files, meta

    def purge_expired(self) -> list[str]:
        """Delete every checkpoint whose ``expires_at`` has passed; returns their tinker paths."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT model_id, kind, name FROM checkpoints"
                " WHERE expires_at IS NOT NULL AND expires_at <= ?",
                (_iso(_now()),),
            ).fetchall()
        gone = []
        for r in rows:
            with contextlib.suppress(UnknownCheckpointError):
                self.delete_checkpoint(r["model_id"], f"{r['kind']}/{r['name']}")
                gone.append(f"tinker://{r['model_id']}/{r['kind']}/{r['name']}")
        return gone

    def get_checkpoint(self, model_id: str, checkpoint_id: str) -> Checkpoint:
        """One checkpoint (``checkpoint_id`` is ``weights/<name>`` or ``sampler_weights/<name>``).

        Raises:
            InvalidNameError: a malformed ``checkpoint_id``.
            UnknownCheckpointError: no such checkpoint.
        """
        kind, name = parse_checkpoint_id(checkpoint_id)
        with self._lock:
            return self._checkpoint(self._ck_row(model_id, kind, name))

    def list_checkpoints(self, model_id: str) -> CheckpointsListResponse:
        """A run's checkpoints, oldest first.

        Raises:
            UnknownTrainingRunError: when ``model_id`` is unknown.
        """
        with self._lock:
            self._require_run(model_id)
            rows = self._conn.execute(
                "SELECT * FROM checkpoints WHERE model_id=? ORDER BY time, rowid", (model_id,)
            ).fetchall()
        cks = [self._checkpoint(r) for r in rows]
        return CheckpointsListResponse(
            checkpoints=cks, cursor=Cursor(offset=0, limit=len(cks), total_count=len(cks))
        )

    def list_user_checkpoints(self, *, limit: int = 100, offset: int = 0) -> CheckpointsListResponse:
        """Every checkpoint, newest first, paginated."""
        _check_page(limit, offset)
        with self._lock:
            total = self._conn.execute("SELECT COUNT(*) FROM checkpoints").fetchone()[0]
            rows = self._conn.execute(
                "SELECT * FROM checkpoints ORDER BY time DESC, rowid DESC LIMIT ? OFFSET ?",
                (limit, offset),
            ).fetchall()
        return CheckpointsListResponse(
            checkpoints=[self._checkpoint(r) for r in rows],
            cursor=Cursor(offset=offset, limit=limit, total_count=total),
        )

    def delete_checkpoint(self, model_id: str, checkpoint_id: str) -> None:
        """Remove a checkpoint's files, cached archive and row.

        Raises:
            InvalidNameError: a malformed ``checkpoint_id``.
            UnknownCheckpointError: no such checkpoint.
        """
        kind, name = parse_checkpoint_id(checkpoint_id)
        kdir = self._kind_dir(model_id, kind)
        with self._lock:
            self._ck_row(model_id, kind, name)
            old = kdir / f".old-{name}-{uuid.uuid4().hex}"
            final = kdir / name
            if final.exists():
                final.rename(old)
            try:
                with self._tx() as c:
                    c.execute(
                        "DELETE FROM checkpoints WHERE model_id=? AND kind=? AND name=?",
                        (model_id, kind, name),
                    )
            except BaseException:
                if old.exists():
                    old.rename(final)
                raise
            shutil.rmtree(self._archive_dir(model_id, kind, name), ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)

    def set_checkpoint_public(self, model_id: str, checkpoint_id: str, public: bool) -> None:
        """Publish or unpublish a checkpoint.

        Raises:
            UnknownCheckpointError: no such checkpoint.
        """
        kind, name = parse_checkpoint_id(checkpoint_id)
        with self._lock, self._tx() as c:
            self._ck_row(model_id, kind, name)
            c.execute(
                "UPDATE checkpoints SET public=? WHERE model_id=? AND kind=? AND name=?",
                (int(public), model_id, kind, name),
            )

    def set_checkpoint_ttl(
        self, model_id: str, checkpoint_id: str, ttl_seconds: int | None
    ) -> None:
        """Set (from now) or clear a checkpoint's ``expires_at``.

        Raises:
            UnknownCheckpointError: no such checkpoint.
        """
        kind, name = parse_checkpoint_id(checkpoint_id)
        expires = _expires(_now(), ttl_seconds)
        with self._lock, self._tx() as c:
            self._ck_row(model_id, kind, name)
            c.execute(
                "UPDATE checkpoints SET expires_at=? WHERE model_id=? AND kind=? AND name=?",
                (expires, model_id, kind, name),
            )

    def archive_path(self, model_id: str, checkpoint_id: str) -> Path:
        """A tar.gz of the checkpoint folder (entries relative), built once and cached.

        The cache is keyed by the checkpoint's version, so an overwrite gives a new archive.

        Raises:
            InvalidNameError: a malformed ``checkpoint_id``.
            UnknownCheckpointError: no such checkpoint.
        """
        kind, name = parse_checkpoint_id(checkpoint_id)
        src = self._kind_dir(model_id, kind) / name
        with self._archive_lock:
            for _ in range(10):
                with self._lock:
                    row = self._ck_row(model_id, kind, name)
                version, mtime = row["version"], datetime.fromisoformat(row["time"]).timestamp()
                dest = self._archive_dir(model_id, kind, name) / f"{version}.tar.gz"
                if dest.is_file():
                    return dest
                try:
                    make_tar_gz(src, dest, mtime=mtime)
                except FileNotFoundError:
                    continue  # overwritten or deleted while read: look again
                with self._lock:
                    current = self._conn.execute(
                        "SELECT version FROM checkpoints WHERE model_id=? AND kind=? AND name=?",
                        (model_id, kind, name),
                    ).fetchone()
                    if current is not None and current["version"] == version:
                        return dest
                shutil.rmtree(dest.parent, ignore_errors=True)
        raise UnknownCheckpointError(f"tinker://{model_id}/{checkpoint_id}")

    def weights_info(self, tinker_path: str) -> WeightsInfoResponse:
        """``/weights_info`` for a checkpoint: base model and LoRA settings (meta over run).

        Raises:
            WireFormatError: a malformed path.
            UnknownCheckpointError: no such checkpoint.
        """
        model_id, kind, name = self._resolve(tinker_path)
        with self._lock:
            meta: dict[str, Any] = json.loads(self._ck_row(model_id, kind, name)["meta"])
            run = self._run_row(model_id)
        base_model = meta.get("base_model", run["base_model"] if run is not None else None)
        if base_model is None:
            raise UnknownCheckpointError(tinker_path)
        opt = meta.get("optimizer_config")
        optimizer_config: OptimizerConfig = (
            AdamOptimizerConfig()
            if opt is None
            else msgspec.convert(opt, OptimizerConfig)
        )
        return WeightsInfoResponse(
            base_model=base_model,
            is_lora=bool(meta.get("is_lora", bool(run["is_lora"]) if run is not None else False)),
            optimizer_config=optimizer_config,
            lora_rank=meta.get("lora_rank", run["lora_rank"] if run is not None else None),
            train_unembed=meta.get("train_unembed"),
            train_mlp=meta.get("train_mlp"),
            train_attn=meta.get("train_attn"),
        )

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
        return GetSamplerResponse(sampler_id=sampler_id, base_model=base_model, model_path=model_path)

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
