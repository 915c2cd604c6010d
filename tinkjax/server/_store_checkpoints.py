"""Checkpoints of the store: crash-safe versioned folders, crash repair, reads, listing, archives.

Layout under ``data_dir``::

    checkpoints/<model dir>/<kind>/<name>@<version>/...   checkpoint files
                                                          (kind: weights | sampler_weights | external_weights)
    archives/<model dir>/<kind>/<name>/<version>.tar.gz   cached archives of checkpoint folders

``<model dir>`` is the model id percent-encoded (``:`` → ``%3A``, ``.`` → ``%2E``), so every id is a
valid, dot-free file name; ``@`` never occurs in a name, so ``<name>@<version>`` is unambiguous.

The committed row decides, always. A save writes and fsyncs the files in ``.tmp-<name>-<hex>``,
renames that to ``<name>@<new version>`` (a folder no row points to yet), commits the row with the
new version, and only then removes the old version's folder and archive. A delete commits the row's
removal, then removes the files. Opening the store repairs what a kill at any step can leave:
temp folders and temp archive files are removed, and so is every folder and archive whose version
is not the one its committed row names. So after a crash each checkpoint is exactly the version
of its last committed save (an acknowledged one, or one whose answer was lost in the crash), and
archives, keyed by version, always hold the files a load reads. The steps carry named crash
points (:mod:`tinkjax.server._crashpoints`) that tests use to kill the process at each one.

Slow file work (writing files, building archives) runs outside the database lock.

A checkpoint whose ``expires_at`` has passed is gone at once: every lookup and listing filters it
out (:data:`~._store_util.LIVE`); its files are purged when the store opens and after each save.
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
from typing import Any, BinaryIO

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
from ._crashpoints import crash_point
from ._store_db import Database, checkpoint_of
from ._store_errors import InvalidNameError, UnknownCheckpointError
from ._store_recovery import VERSION_SEP, recover_archives, recover_kind_dir
from ._store_util import (
    KINDS,
    LIVE,
    CheckpointKind,
    check_page,
    expires_at,
    iso,
    model_dir_name,
    now_iso,
    parse_checkpoint_id,
    to_json,
    utc_now,
    validate_kind,
    validate_name,
)

__all__ = ["Checkpoints"]

_VERSION_SEP = VERSION_SEP


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
        self.purge_expired()

    def _kind_dir(self, model_id: str, kind: str) -> Path:
        return self.root / model_dir_name(model_id) / kind

    def _version_dir(self, model_id: str, kind: str, name: str, version: str) -> Path:
        return self._kind_dir(model_id, kind) / f"{name}{_VERSION_SEP}{version}"

    def _archive_dir(self, model_id: str, kind: str, name: str) -> Path:
        return self.archives_root / model_dir_name(model_id) / kind / name

    def _recover(self) -> None:
        """Make the files agree with the committed rows after a crash (lock held).

        Every step is idempotent, so a crash during recovery is repaired by the next opening.
        """
        rows = self._db.all("SELECT model_id, kind, name, version FROM checkpoints")
        current = {
            (model_dir_name(r["model_id"]), r["kind"], r["name"]): r["version"] for r in rows
        }
        for model_dir in list(self.root.iterdir()):
            for kind in KINDS:
                kdir = model_dir / kind
                if kdir.is_dir():
                    recover_kind_dir(kdir, model_dir.name, kind, current)
        with self._db.tx():
            for r in rows:
                folder = self._version_dir(r["model_id"], r["kind"], r["name"], r["version"])
                if not folder.is_dir():  # lost outside the store's control: drop the row
                    self._db.execute(
                        "DELETE FROM checkpoints WHERE model_id=? AND kind=? AND name=?",
                        (r["model_id"], r["kind"], r["name"]),
                    )
                    current.pop((model_dir_name(r["model_id"]), r["kind"], r["name"]), None)
        recover_archives(self.archives_root, current)

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
            kind: ``weights`` (training state), ``sampler_weights`` or ``external_weights``.
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
        version = uuid.uuid4().hex
        tmp = kdir / f".tmp-{name}-{version}"
        staged = kdir / f"{name}{_VERSION_SEP}{version}"
        committed = False
        old: Any = None
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
            crash_point("save.files_written")
            # Staged under its versioned name: until the row names this version, recovery
            # removes it as a save that never happened.
            tmp.rename(staged)
            fsync_dir(kdir)
            crash_point("save.staged")
            size = sum(len(d) for _, d in rels)
            now = utc_now()
            expires = expires_at(now, ttl_seconds)
            with self._db.lock:
                self._db.require_run(model_id)
                old = self._db.one(
                    "SELECT version FROM checkpoints WHERE model_id=? AND kind=? AND name=?",
                    (model_id, kind, name),
                )
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
                            version,
                        ),
                    )
                committed = True
                row = self._db.checkpoint_row(model_id, kind, name)
        except BaseException:
            if not committed:
                shutil.rmtree(tmp, ignore_errors=True)
                shutil.rmtree(staged, ignore_errors=True)
            raise
        crash_point("save.committed")
        if old is not None:
            self._remove_version(model_id, kind, name, old["version"])
        crash_point("save.cleaned")
        self.purge_expired()
        return checkpoint_of(row)

    def _remove_version(self, model_id: str, kind: str, name: str, version: str) -> None:
        """Remove the folder and cached archive of a version no row names any more."""
        shutil.rmtree(self._version_dir(model_id, kind, name, version), ignore_errors=True)
        archive_dir = self._archive_dir(model_id, kind, name)
        # Under the archive lock: an archive being built creates this folder (``mkdir`` with
        # ``exist_ok`` raises when the folder is removed between its two checks). Callers hold
        # no database lock here, so the lock order stays archive -> database.
        with self._archive_lock:
            (archive_dir / f"{version}.tar.gz").unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                archive_dir.rmdir()  # only when empty

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

        The folder (of the committed version) stays valid until the checkpoint is overwritten
        or deleted.

        Raises:
            WireFormatError: a malformed path.
            UnknownCheckpointError: no such checkpoint.
        """
        model_id, kind, name = self._resolve(tinker_path)
        with self._db.lock:
            row = self._db.checkpoint_row(model_id, kind, name)
            meta: dict[str, Any] = json.loads(row["meta"])
        return self._version_dir(model_id, kind, name, row["version"]), meta

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
            folder = self._version_dir(model_id, kind, name, row["version"])
            files = {
                p.relative_to(folder).as_posix(): p.read_bytes()
                for p in sorted(folder.rglob("*"))
                if p.is_file() and not p.is_symlink()
            }
            meta: dict[str, Any] = json.loads(row["meta"])
        return files, meta

    def purge_expired(self) -> list[str]:
        """Delete the files and rows of every checkpoint whose ``expires_at`` has passed (they
        are already hidden from every lookup); returns their tinker paths."""
        with self._db.lock:
            rows = self._db.execute(
                "SELECT model_id, kind, name, version FROM checkpoints"
                " WHERE expires_at IS NOT NULL AND expires_at <= ?",
                (now_iso(),),
            ).fetchall()
            if rows:
                with self._db.tx() as c:
                    for r in rows:
                        c.execute(
                            "DELETE FROM checkpoints WHERE model_id=? AND kind=? AND name=?"
                            " AND version=?",
                            (r["model_id"], r["kind"], r["name"], r["version"]),
                        )
        for r in rows:
            self._remove_version(r["model_id"], r["kind"], r["name"], r["version"])
        return [f"tinker://{r['model_id']}/{r['kind']}/{r['name']}" for r in rows]

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
                f"SELECT * FROM checkpoints WHERE model_id=? AND {LIVE} ORDER BY time, rowid",
                (model_id, now_iso()),
            ).fetchall()
        cks = [checkpoint_of(r) for r in rows]
        return CheckpointsListResponse(
            checkpoints=cks, cursor=Cursor(offset=0, limit=len(cks), total_count=len(cks))
        )

    def page(
        self, *, limit: int = 100, offset: int = 0, tenant: str | None = None
    ) -> CheckpointsListResponse:
        """Every checkpoint (only ``tenant``'s when given), newest first, paginated."""
        check_page(limit, offset)
        where = f" WHERE {LIVE}"
        args: tuple[str, ...] = (now_iso(),)
        if tenant is not None:
            where += (
                " AND model_id IN (SELECT model_id FROM training_runs WHERE session_id IN"
                " (SELECT session_id FROM sessions WHERE tenant=?))"
            )
            args = (*args, tenant)
        with self._db.lock:
            total = self._db.execute(f"SELECT COUNT(*) FROM checkpoints{where}", args).fetchone()[0]
            rows = self._db.execute(
                f"SELECT * FROM checkpoints{where} ORDER BY time DESC, rowid DESC LIMIT ? OFFSET ?",
                (*args, limit, offset),
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
        with self._db.lock:
            version = self._db.checkpoint_row(model_id, kind, name)["version"]
            with self._db.tx() as c:
                c.execute(
                    "DELETE FROM checkpoints WHERE model_id=? AND kind=? AND name=?",
                    (model_id, kind, name),
                )
        crash_point("delete.committed")
        self._remove_version(model_id, kind, name, version)
        crash_point("delete.cleaned")

    def set_public(self, model_id: str, checkpoint_id: str, public: bool) -> bool:
        """Publish or unpublish a checkpoint; whether that changed it (``False``: it already
        was public, or private).

        Raises:
            UnknownCheckpointError: no such checkpoint.
        """
        kind, name = parse_checkpoint_id(checkpoint_id)
        with self._db.lock, self._db.tx() as c:
            if bool(self._db.checkpoint_row(model_id, kind, name)["public"]) == public:
                return False
            c.execute(
                "UPDATE checkpoints SET public=? WHERE model_id=? AND kind=? AND name=?",
                (int(public), model_id, kind, name),
            )
        return True

    def is_public(self, tinker_path: str) -> bool:
        """Whether the checkpoint at ``tinker_path`` exists and is published (readable by every
        tenant: loads, samplers, ``weights_info``, copies). ``False`` for a malformed path."""
        try:
            model_id, kind, name = self._resolve(tinker_path)
        except (WireFormatError, UnknownCheckpointError):
            return False
        with self._db.lock:
            try:
                return bool(self._db.checkpoint_row(model_id, kind, name)["public"])
            except UnknownCheckpointError:
                return False

    def files(self, model_id: str, checkpoint_id: str) -> tuple[str, dict[str, int]]:
        """The committed version of a checkpoint and its files (relative name → size).

        Raises:
            InvalidNameError: a malformed ``checkpoint_id``.
            UnknownCheckpointError: no such checkpoint.
        """
        kind, name = parse_checkpoint_id(checkpoint_id)
        with self._db.lock:
            version: str = self._db.checkpoint_row(model_id, kind, name)["version"]
            folder = self._version_dir(model_id, kind, name, version)
            files = {
                p.relative_to(folder).as_posix(): p.stat().st_size
                for p in sorted(folder.rglob("*"))
                if p.is_file() and not p.is_symlink()
            }
        return version, files

    def open_file(self, model_id: str, checkpoint_id: str, version: str, rel: str) -> BinaryIO:
        """One file of a checkpoint, opened for reading, if ``version`` is still the committed
        one. The open file stays readable when a later overwrite or delete removes it.

        Raises:
            InvalidNameError: a malformed ``checkpoint_id`` or file name.
            UnknownCheckpointError: no such checkpoint, version or file.
        """
        kind, name = parse_checkpoint_id(checkpoint_id)
        for seg in rel.split("/"):
            validate_name(seg, field="file")
        with self._db.lock:
            row = self._db.checkpoint_row(model_id, kind, name)
            path = self._version_dir(model_id, kind, name, version) / rel
            if row["version"] != version or path.is_symlink() or not path.is_file():
                raise UnknownCheckpointError(f"tinker://{model_id}/{checkpoint_id} file {rel!r}")
            return open(path, "rb")

    def copy(self, tinker_path: str, dest_model_id: str, *, ttl_seconds: int | None) -> Checkpoint:
        """Copy a checkpoint (files, ``meta``, user metadata; not its expiry nor publication)
        under the same kind and name into the training run ``dest_model_id`` (must exist).

        Raises:
            WireFormatError: a malformed path.
            UnknownCheckpointError: no such checkpoint.
            UnknownTrainingRunError: when ``dest_model_id`` is unknown.
        """
        _, kind, name = self._resolve(tinker_path)
        files, meta = self.read(tinker_path)
        model_id = parse_tinker_path(tinker_path).training_run_id
        with self._db.lock:
            user = self._db.checkpoint_row(model_id, kind, name)["user_metadata"]
        return self.save(
            dest_model_id, kind, name, files, meta=meta,  # type: ignore[arg-type]
            user_metadata=None if user is None else json.loads(user), ttl_seconds=ttl_seconds,
        )  # fmt: skip

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
        with self._archive_lock:
            for _ in range(10):
                with self._db.lock:
                    row = self._db.checkpoint_row(model_id, kind, name)
                version, mtime = row["version"], datetime.fromisoformat(row["time"]).timestamp()
                src = self._version_dir(model_id, kind, name, version)
                dest = self._archive_dir(model_id, kind, name) / f"{version}.tar.gz"
                if dest.is_file():
                    return dest
                try:
                    make_tar_gz(
                        src, dest, mtime=mtime,
                        before_replace=lambda: crash_point("archive.written"),
                    )  # fmt: skip
                except FileNotFoundError:
                    continue  # overwritten or deleted while read: look again
                crash_point("archive.renamed")
                with self._db.lock:
                    now = self._db.one(
                        "SELECT version FROM checkpoints WHERE model_id=? AND kind=? AND name=?",
                        (model_id, kind, name),
                    )
                    if now is not None and now["version"] == version:
                        return dest
                # Replaced or deleted meanwhile (the folder may have gone while it was read).
                dest.unlink(missing_ok=True)
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
