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

The class is assembled from private parts: ``_store_db`` (connection, schema, crash repair),
``_store_sessions`` (sessions, samplers, telemetry), ``_store_runs`` (training runs) and
``_store_checkpoints`` (checkpoint files and rows); errors live in ``_store_errors`` and name
checks in ``_store_util``.
"""

from __future__ import annotations

from ._store_checkpoints import _CheckpointsMixin
from ._store_errors import (
    DuplicateIdError,
    InvalidNameError,
    StoreError,
    UnknownCheckpointError,
    UnknownSamplerError,
    UnknownSessionError,
    UnknownTrainingRunError,
)
from ._store_runs import _TrainingRunsMixin
from ._store_sessions import _SessionsMixin
from ._store_util import CheckpointKind, parse_checkpoint_id, validate_name

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


class CheckpointStore(_SessionsMixin, _TrainingRunsMixin, _CheckpointsMixin):
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

    # -- plumbing ---------------------------------------------------------------------------

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
