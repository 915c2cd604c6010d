"""Checkpoints of the checkpoint store: atomic folder writes, reads, listing, archives."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec

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
from ._store_db import _StoreBase
from ._store_errors import InvalidNameError, UnknownCheckpointError
from ._store_util import (
    _KINDS,
    CheckpointKind,
    _check_page,
    _expires,
    _iso,
    _json,
    _now,
    _validate_kind,
    parse_checkpoint_id,
    validate_name,
)


class _CheckpointsMixin(_StoreBase):
    """Checkpoint folders and rows: save (atomic), read, list, delete, publish, expire, archive."""

    # -- checkpoints ------------------------------------------------------------------------

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
                        (
                            model_id,
                            kind,
                            name,
                            _iso(now),
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

    def list_user_checkpoints(
        self, *, limit: int = 100, offset: int = 0
    ) -> CheckpointsListResponse:
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
