"""Training runs (models) of the checkpoint store."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Mapping
from datetime import UTC, datetime

from tinkjax.types import (
    Checkpoint,
    Cursor,
    TrainingRun,
    TrainingRunsResponse,
)

from ._store_db import _StoreBase
from ._store_errors import DuplicateIdError, UnknownTrainingRunError
from ._store_util import _KINDS, _check_page, _iso, _json, _now, _validate_id

_TOUCH_PERSIST_S = 1.0


class _TrainingRunsMixin(_StoreBase):
    """Training runs: creation, listing and the cheap ``last_request_time`` touch."""

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
                "SELECT * FROM training_runs ORDER BY rowid DESC LIMIT ? OFFSET ?",
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
