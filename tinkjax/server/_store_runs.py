"""Training runs (models) of the store, with the cheap ``last_request_time`` touch."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Mapping
from datetime import UTC, datetime

from tinkjax.types import Checkpoint, Cursor, TrainingRun, TrainingRunsResponse

from ._store_db import Database, checkpoint_of
from ._store_errors import DuplicateIdError, UnknownTrainingRunError
from ._store_util import KINDS, LIVE, check_page, iso, now_iso, to_json, utc_now, validate_id

__all__ = ["TrainingRuns"]

#: A run's ``last_request_time`` is written to disk at most this often (reads see it at once).
TOUCH_PERSIST_S = 1.0
_NEVER = datetime.min.replace(tzinfo=UTC)


class TrainingRuns:
    """The ``training_runs`` table.

    Args:
        db: the store's database.
        owner: the ``model_owner`` reported for every run.
    """

    def __init__(self, db: Database, *, owner: str) -> None:
        self._db = db
        self.owner = owner
        # model_id -> (last request time, when it was last written): touches are persisted at
        # most once per TOUCH_PERSIST_S so the per-request path does not fsync every time.
        self._touched: dict[str, tuple[datetime, float]] = {}

    def add(
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
        validate_id(model_id, "model_id")
        now = iso(utc_now())
        meta = None if user_metadata is None else to_json(dict(user_metadata))
        with self._db.lock:
            with self._db.tx() as c:
                if session_id is not None:
                    self._db.session_row(session_id)
                try:
                    c.execute(
                        "INSERT INTO training_runs (model_id, session_id, base_model, is_lora,"
                        " lora_rank, user_metadata, created_at, last_request_time)"
                        " VALUES (?,?,?,?,?,?,?,?)",
                        (model_id, session_id, base_model, int(is_lora), lora_rank, meta, now, now),
                    )
                except sqlite3.IntegrityError:
                    raise DuplicateIdError("model_id", model_id) from None
            return self._run(self._db.require_run(model_id))

    def has(self, model_id: str) -> bool:
        """Whether ``model_id`` is known."""
        with self._db.lock:
            return self._db.run_row(model_id) is not None

    def _run(self, row: sqlite3.Row) -> TrainingRun:
        """The wire run of ``row`` with its latest checkpoints (lock held)."""
        model_id = row["model_id"]
        last: dict[str, Checkpoint | None] = {}
        for kind in KINDS:
            ck = self._db.one(
                f"SELECT * FROM checkpoints WHERE model_id=? AND kind=? AND {LIVE}"
                " ORDER BY time DESC, rowid DESC LIMIT 1",
                (model_id, kind, now_iso()),
            )
            last[kind] = None if ck is None else checkpoint_of(ck)
        meta = row["user_metadata"]
        return TrainingRun(
            training_run_id=model_id,
            base_model=row["base_model"],
            model_owner=self.owner,
            is_lora=bool(row["is_lora"]),
            last_request_time=max(
                datetime.fromisoformat(row["last_request_time"]),
                self._touched.get(model_id, (_NEVER, 0.0))[0],
            ),
            lora_rank=row["lora_rank"],
            last_checkpoint=last["weights"],
            last_sampler_checkpoint=last["sampler_weights"],
            user_metadata=None if meta is None else json.loads(meta),
        )

    def get(self, model_id: str) -> TrainingRun:
        """One training run, with its latest training and sampler checkpoints.

        Raises:
            UnknownTrainingRunError: when ``model_id`` is unknown.
        """
        with self._db.lock:
            return self._run(self._db.require_run(model_id))

    def tenant_of(self, model_id: str) -> str | None:
        """The tenant owning a run (through its session); ``None`` when unknown."""
        with self._db.lock:
            row = self._db.one(
                "SELECT s.tenant FROM training_runs r JOIN sessions s USING (session_id)"
                " WHERE r.model_id=?",
                (model_id,),
            )
        return None if row is None else row["tenant"]

    def page(
        self, *, limit: int = 20, offset: int = 0, tenant: str | None = None
    ) -> TrainingRunsResponse:
        """Training runs, newest first, with a cursor (offset, limit, total_count); only
        ``tenant``'s when given."""
        check_page(limit, offset)
        where = ""
        args: tuple[str, ...] = ()
        if tenant is not None:
            where = " WHERE session_id IN (SELECT session_id FROM sessions WHERE tenant=?)"
            args = (tenant,)
        with self._db.lock:
            total = self._db.execute(f"SELECT COUNT(*) FROM training_runs{where}", args).fetchone()[
                0
            ]
            rows = self._db.all(
                f"SELECT * FROM training_runs{where} ORDER BY rowid DESC LIMIT ? OFFSET ?",
                (*args, limit, offset),
            )
            runs = [self._run(r) for r in rows]
        return TrainingRunsResponse(
            training_runs=runs, cursor=Cursor(offset=offset, limit=limit, total_count=total)
        )

    def touch(self, model_id: str) -> None:
        """Set a run's ``last_request_time`` to now.

        Reads see it at once; it is written to disk at most once a second per run (and on
        :meth:`flush`), so calling this on every request is cheap.

        Raises:
            UnknownTrainingRunError: when ``model_id`` is unknown.
        """
        now = utc_now()
        tick = time.monotonic()
        with self._db.lock:
            seen = self._touched.get(model_id)
            if seen is not None and tick - seen[1] < TOUCH_PERSIST_S:
                self._touched[model_id] = (now, seen[1])
                return
            with self._db.tx() as c:
                cur = c.execute(
                    "UPDATE training_runs SET last_request_time=? WHERE model_id=?",
                    (iso(now), model_id),
                )
                if cur.rowcount == 0:
                    raise UnknownTrainingRunError(model_id)
            self._touched[model_id] = (now, tick)

    def flush(self) -> None:
        """Write every in-memory ``last_request_time``."""
        with self._db.lock, self._db.tx() as c:
            c.executemany(
                "UPDATE training_runs SET last_request_time=? WHERE model_id=?",
                [(iso(t), m) for m, (t, _) in self._touched.items()],
            )
            self._touched.clear()
