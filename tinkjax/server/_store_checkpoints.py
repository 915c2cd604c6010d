"""Checkpoints of the store: atomic folder writes, crash repair, reads, listing, archives.

Layout under ``data_dir``::

    checkpoints/<model dir>/<kind>/<name>/...     checkpoint files (kind: weights | sampler_weights)
    archives/<model dir>/<kind>/<name>/<version>.tar.gz   cached archives of checkpoint folders

``<model dir>`` is the model id percent-encoded (``:`` → ``%3A``, ``.`` → ``%2E``), so every id is a
valid, dot-free file name. A checkpoint folder is written as ``.tmp-<name>-<hex>`` next to its final
place and renamed into place; an overwrite first renames the old folder to ``.old-<name>-<hex>``.
Opening repairs what a crash can leave behind: temp folders are removed, a lone ``.old`` folder
is put back, folders without a row and rows without a folder are dropped. Slow file work
(writing files, building archives) runs outside the database lock.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
import uuid
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec

from tinkjax.errors import WireFormatError
from tinkjax.types import (
    AdamOptimizerConfig,
    Checkpoint,
    CheckpointsListResponse,
    Cursor,
    OptimizerConfig,
    WeightsInfoResponse,
    parse_tinker_path,
)

from ._archive import fsync_dir, make_tar_gz
from ._store_db import Database, checkpoint_of
from ._store_errors import InvalidNameError, UnknownCheckpointError
from ._store_util import (
    KINDS,
    CheckpointKind,
    check_page,
    expires_at,
    iso,
    model_dir_name,
    parse_checkpoint_id,
    to_json,
    utc_now,
    validate_kind,
    validate_name,
)

__all__ = ["Checkpoints"]


class Checkpoints:
    """Checkpoint folders and rows: save (atomic), read, list, delete, publish, expire, archive.

    Args:
        db: the store's database.
        data_dir: the folder holding ``checkpoints/`` and ``archives/`` (created).
    """

    def __init__(self, db: Database, data_dir: Path) -> None:
        self._db = db
        self.root = data_dir / "checkpoints"
        self.archives_root = data_dir / "archives"
        self.root.mkdir(parents=True, exist_ok=True)
        self.archives_root.mkdir(parents=True, exist_ok=True)
        self._archive_lock = threading.Lock()
        with db.lock:
            self._recover()

    def _kind_dir(self, model_id: str, kind: str) -> Path:
        return self.root / model_dir_name(model_id) / kind

    def _archive_dir(self, model_id: str, kind: str, name: str) -> Path:
        return self.archives_root / model_dir_name(model_id) / kind / name

    def _recover(self) -> None:
        """Repair what a crash in the middle of a save or delete can leave (lock held)."""
        rows = self._db.all("SELECT model_id, kind, name FROM checkpoints")
        known = {(model_dir_name(r["model_id"]), r["kind"], r["name"]) for r in rows}
        for model_dir in self.root.iterdir():
            for kind in KINDS:
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
        with self._db.tx():
            for r in rows:
                if not (self._kind_dir(r["model_id"], r["kind"]) / r["name"]).is_dir():
                    self._db.execute(
                        "DELETE FROM checkpoints WHERE model_id=? AND kind=? AND name=?",
                        (r["model_id"], r["kind"], r["name"]),
                    )

    # -- checkpoints ------------------------------------------------------------------------

    def save(
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
            meta: JSON-able metadata, given back by :meth:`folder`; keys ``base_model``,
                ``is_lora``, ``lora_rank``, ``train_unembed``, ``train_mlp``, ``train_attn`` and
                ``optimizer_config`` feed :meth:`weights_info`.
            user_metadata: reported in the checkpoint listing.
            ttl_seconds: sets ``expires_at``; :meth:`purge_expired` deletes expired checkpoints.

        Raises:
            InvalidNameError: a bad kind, name or file name.
            UnknownTrainingRunError: when ``model_id`` is unknown.
        """
        kind = validate_kind(kind)
        validate_name(name)
        expires_at(utc_now(), ttl_seconds)
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
        meta_json = to_json(dict(meta))
        user_json = None if user_metadata is None else to_json(dict(user_metadata))
        with self._db.lock:
            self._db.require_run(model_id)
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
            now = utc_now()
            expires = expires_at(now, ttl_seconds)
            final = kdir / name
            old: Path | None = None
            with self._db.lock:
                self._db.require_run(model_id)
                with self._db.tx() as c:
                    c.execute(
                        "INSERT INTO checkpoints (model_id, kind, name, time, size_bytes, meta,"
                        " user_metadata, expires_at, public, version)"
                        " VALUES (?,?,?,?,?,?,?,?,0,?)"
                        " ON CONFLICT (model_id, kind, name) DO UPDATE SET time=excluded.time,"
                        " size_bytes=excluded.size_bytes, meta=excluded.meta,"
                        " user_metadata=excluded.user_metadata, expires_at=excluded.expires_at,"
                        " version=excluded.version",
                        (
                            model_id,
                            kind,
                            name,
                            iso(now),
                            size,
                            meta_json,
                            user_json,
                            expires,
                            uuid.uuid4().hex,
                        ),
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
                row = self._db.checkpoint_row(model_id, kind, name)
                shutil.rmtree(self._archive_dir(model_id, kind, name), ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return checkpoint_of(row)

    def _resolve(self, tinker_path: str) -> tuple[str, str, str]:
        if not isinstance(tinker_path, str):
            raise WireFormatError(
                f"tinker_path: expected a tinker:// path, got {tinker_path!r}", field="tinker_path"
            )
        parsed = parse_tinker_path(tinker_path)
        if parsed.kind not in KINDS:
            raise UnknownCheckpointError(tinker_path)
        return parsed.training_run_id, parsed.kind, parsed.name

    def folder(self, tinker_path: str) -> tuple[Path, dict[str, Any]]:
        """The folder and ``meta`` of ``tinker://{model_id}/{weights|sampler_weights}/{name}``.

        The folder stays valid until the checkpoint is overwritten or deleted.

        Raises:
            WireFormatError: a malformed path.
            UnknownCheckpointError: no such checkpoint.
        """
        model_id, kind, name = self._resolve(tinker_path)
        with self._db.lock:
            row = self._db.checkpoint_row(model_id, kind, name)
            meta: dict[str, Any] = json.loads(row["meta"])
        return self._kind_dir(model_id, kind) / name, meta

    def read(self, tinker_path: str) -> tuple[dict[str, bytes], dict[str, Any]]:
        """Every file (relative ``/``-separated name → bytes) and the ``meta`` of a checkpoint.

        Read under the store's lock, so a concurrent overwrite or delete cannot tear it.

        Raises:
            WireFormatError: a malformed path.
            UnknownCheckpointError: no such checkpoint.
        """
        model_id, kind, name = self._resolve(tinker_path)
        with self._db.lock:
            row = self._db.checkpoint_row(model_id, kind, name)
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
        with self._db.lock:
            rows = self._db.execute(
                "SELECT model_id, kind, name FROM checkpoints"
                " WHERE expires_at IS NOT NULL AND expires_at <= ?",
                (iso(utc_now()),),
            ).fetchall()
        gone = []
        for r in rows:
            with contextlib.suppress(UnknownCheckpointError):
                self.delete(r["model_id"], f"{r['kind']}/{r['name']}")
                gone.append(f"tinker://{r['model_id']}/{r['kind']}/{r['name']}")
        return gone

    def get(self, model_id: str, checkpoint_id: str) -> Checkpoint:
        """One checkpoint (``checkpoint_id`` is ``weights/<name>`` or ``sampler_weights/<name>``).

        Raises:
            InvalidNameError: a malformed ``checkpoint_id``.
            UnknownCheckpointError: no such checkpoint.
        """
        kind, name = parse_checkpoint_id(checkpoint_id)
        with self._db.lock:
            return checkpoint_of(self._db.checkpoint_row(model_id, kind, name))

    def of_run(self, model_id: str) -> CheckpointsListResponse:
        """A run's checkpoints, oldest first.

        Raises:
            UnknownTrainingRunError: when ``model_id`` is unknown.
        """
        with self._db.lock:
            self._db.require_run(model_id)
            rows = self._db.execute(
                "SELECT * FROM checkpoints WHERE model_id=? ORDER BY time, rowid", (model_id,)
            ).fetchall()
        cks = [checkpoint_of(r) for r in rows]
        return CheckpointsListResponse(
            checkpoints=cks, cursor=Cursor(offset=0, limit=len(cks), total_count=len(cks))
        )

    def page(self, *, limit: int = 100, offset: int = 0) -> CheckpointsListResponse:
        """Every checkpoint, newest first, paginated."""
        check_page(limit, offset)
        with self._db.lock:
            total = self._db.execute("SELECT COUNT(*) FROM checkpoints").fetchone()[0]
            rows = self._db.execute(
                "SELECT * FROM checkpoints ORDER BY time DESC, rowid DESC LIMIT ? OFFSET ?",
                (limit, offset),
            ).fetchall()
        return CheckpointsListResponse(
            checkpoints=[checkpoint_of(r) for r in rows],
            cursor=Cursor(offset=offset, limit=limit, total_count=total),
        )

    def delete(self, model_id: str, checkpoint_id: str) -> None:
        """Remove a checkpoint's files, cached archive and row.

        Raises:
            InvalidNameError: a malformed ``checkpoint_id``.
            UnknownCheckpointError: no such checkpoint.
        """
        kind, name = parse_checkpoint_id(checkpoint_id)
        kdir = self._kind_dir(model_id, kind)
        with self._db.lock:
            self._db.checkpoint_row(model_id, kind, name)
            old = kdir / f".old-{name}-{uuid.uuid4().hex}"
            final = kdir / name
            if final.exists():
                final.rename(old)
            try:
                with self._db.tx() as c:
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

    def set_public(self, model_id: str, checkpoint_id: str, public: bool) -> None:
        """Publish or unpublish a checkpoint.

        Raises:
            UnknownCheckpointError: no such checkpoint.
        """
        kind, name = parse_checkpoint_id(checkpoint_id)
        with self._db.lock, self._db.tx() as c:
            self._db.checkpoint_row(model_id, kind, name)
            c.execute(
                "UPDATE checkpoints SET public=? WHERE model_id=? AND kind=? AND name=?",
                (int(public), model_id, kind, name),
            )

    def set_ttl(self, model_id: str, checkpoint_id: str, ttl_seconds: int | None) -> None:
        """Set (from now) or clear a checkpoint's ``expires_at``.

        Raises:
            UnknownCheckpointError: no such checkpoint.
        """
        kind, name = parse_checkpoint_id(checkpoint_id)
        expires = expires_at(utc_now(), ttl_seconds)
        with self._db.lock, self._db.tx() as c:
            self._db.checkpoint_row(model_id, kind, name)
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
                with self._db.lock:
                    row = self._db.checkpoint_row(model_id, kind, name)
                version, mtime = row["version"], datetime.fromisoformat(row["time"]).timestamp()
                dest = self._archive_dir(model_id, kind, name) / f"{version}.tar.gz"
                if dest.is_file():
                    return dest
                try:
                    make_tar_gz(src, dest, mtime=mtime)
                except FileNotFoundError:
                    continue  # overwritten or deleted while read: look again
                with self._db.lock:
                    current = self._db.execute(
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
        with self._db.lock:
            meta: dict[str, Any] = json.loads(self._db.checkpoint_row(model_id, kind, name)["meta"])
            run = self._db.run_row(model_id)
        base_model = meta.get("base_model", run["base_model"] if run is not None else None)
        if base_model is None:
            raise UnknownCheckpointError(tinker_path)
        opt = meta.get("optimizer_config")
        optimizer_config: OptimizerConfig = (
            AdamOptimizerConfig() if opt is None else msgspec.convert(opt, OptimizerConfig)
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
