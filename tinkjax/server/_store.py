"""Durable state of the local backend: sessions, training runs, checkpoints, samplers, telemetry.

Layout under ``data_dir``: ``meta.sqlite`` (metadata; SQLite, WAL), ``checkpoints/`` and
``archives/`` (see :mod:`tinkjax.server._store_checkpoints`).

:class:`Store` is a composition, not a class hierarchy: one :class:`Database` (connection, lock,
schema, shared row lookups) and the parts that use it — :attr:`Store.sessions` (sessions and
samplers), :attr:`Store.runs` (training runs), :attr:`Store.checkpoints` (checkpoint files and
rows) and :attr:`Store.telemetry`. Errors live in ``_store_errors``, name checks in
``_store_util``.
"""

from __future__ import annotations

from pathlib import Path

from ._store_checkpoints import Checkpoints
from ._store_db import Database
from ._store_errors import (
    DuplicateIdError,
    InvalidNameError,
    StoreError,
    UnknownCheckpointError,
    UnknownIdError,
    UnknownSamplerError,
    UnknownSessionError,
    UnknownTrainingRunError,
)
from ._store_runs import TrainingRuns
from ._store_sessions import Sessions
from ._store_telemetry import Telemetry
from ._store_util import CheckpointKind, parse_checkpoint_id, validate_name

__all__ = [
    "CheckpointKind",
    "Checkpoints",
    "Database",
    "DuplicateIdError",
    "InvalidNameError",
    "Sessions",
    "Store",
    "StoreError",
    "Telemetry",
    "TrainingRuns",
    "UnknownCheckpointError",
    "UnknownIdError",
    "UnknownSamplerError",
    "UnknownSessionError",
    "UnknownTrainingRunError",
    "parse_checkpoint_id",
    "validate_name",
]


class Store:
    """Sessions, training runs, checkpoints, samplers and telemetry, kept under ``data_dir``.

    Thread-safe: every method of every part may be called from any thread. Methods block on disk
    I/O (SQLite commits fsync), so call them from a worker thread, never the event loop. A new
    store opened on the same ``data_dir`` (after a restart, once the old one is closed) sees
    everything the old one committed; two live stores on one ``data_dir`` are not supported
    (opening one cleans up the other's in-progress writes).

    Args:
        data_dir: folder for ``meta.sqlite``, ``checkpoints/`` and ``archives/`` (created).
        owner: the ``model_owner`` reported for training runs.
        max_telemetry_events: the most telemetry events kept; the oldest are dropped beyond it.
        max_telemetry_bytes: the most telemetry payload bytes kept; the oldest events are
            dropped beyond it.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        owner: str = "local",
        max_telemetry_events: int = 100_000,
        max_telemetry_bytes: int = 64 * 2**20,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.db = Database(self.data_dir / "meta.sqlite")
        self.sessions = Sessions(self.db)
        self.runs = TrainingRuns(self.db, owner=owner)
        self.checkpoints = Checkpoints(self.db, self.data_dir)
        self.telemetry = Telemetry(
            self.db, max_events=max_telemetry_events, max_bytes=max_telemetry_bytes
        )

    def close(self) -> None:
        """Persist pending touches and close the database (idempotent); the store is unusable after."""
        with self.db.lock:
            if self.db.closed:
                return
            self.runs.flush()
            self.db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
