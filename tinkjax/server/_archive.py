"""Atomic file writes and safe tar.gz archives of checkpoint folders.

Every file the server keeps is written to a temporary file in its final directory, flushed,
``fsync``-ed and then ``os.replace``-d into place, so a crash leaves either the old or the new
file, never a torn one. Archives hold regular files only, under relative names.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import tarfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

__all__ = ["TEMP_PREFIX", "fsync_dir", "make_tar_gz", "safe_members", "write_atomic"]


def fsync_dir(path: Path) -> None:
    """``fsync`` a directory so renames inside it survive a crash (a no-op where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # Windows cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


TEMP_PREFIX = ".tmp-"
"""Temp files of atomic writes are named ``.tmp-<final name>-<hex>`` (a crash can leave one)."""


@contextlib.contextmanager
def _atomic_open(
    path: Path, before_replace: Callable[[], None] | None = None
) -> Iterator[BinaryIO]:
    """A binary file that becomes ``path`` atomically when the block ends without an error:
    written to a temp file in the same directory, fsynced, then renamed over ``path`` (and the
    directory fsynced); on an error the temp file is removed and ``path`` is untouched.
    ``before_replace`` runs once the temp file is complete, before the rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f"{TEMP_PREFIX}{path.name}-{uuid.uuid4().hex}"
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same directory, fsync, replace)."""
    with _atomic_open(path) as f:
        f.write(data)


def _regular_files(root: Path) -> Iterator[tuple[Path, str]]:
    """Every regular file under ``root`` with its ``/``-separated relative name, sorted."""
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for fname in sorted(filenames):
            full = Path(dirpath) / fname
            if full.is_symlink() or not full.is_file():
                continue
            yield full, full.relative_to(root).as_posix()


def make_tar_gz(
    src_dir: Path,
    dest: Path,
    *,
    mtime: float = 0.0,
    before_replace: Callable[[], None] | None = None,
) -> None:
    """Archive the regular files under ``src_dir`` into ``dest`` (tar.gz), atomically.

    Entries are relative (``adapter_config.json``, ``sub/x.bin``), owned by uid/gid 0 with mode
    0644 and the given ``mtime``, so the same folder always gives the same bytes.
    ``before_replace`` runs once the temp file is complete, before it is renamed to ``dest``.

    Raises:
        FileNotFoundError: when ``src_dir`` disappears while it is read.
    """
    if not src_dir.is_dir():
        raise FileNotFoundError(f"checkpoint folder {str(src_dir)!r} does not exist")
    with (
        _atomic_open(dest, before_replace) as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=int(mtime)) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for full, rel in _regular_files(src_dir):
            info = tarfile.TarInfo(rel)
            info.size = full.stat().st_size
            info.mode = 0o644
            info.mtime = int(mtime)
            with open(full, "rb") as f:
                tar.addfile(info, f)


def safe_members(tar: tarfile.TarFile) -> list[tarfile.TarInfo]:
    """The members of ``tar``, after checking each is a regular file or folder with a relative name.

    Raises:
        ValueError: naming the member when one is absolute, contains ``..``, or is a link or
            device.
    """
    members = tar.getmembers()
    for m in members:
        parts = m.name.split("/")
        if m.name.startswith("/") or ".." in parts or not (m.isfile() or m.isdir()):
            raise ValueError(f"archive member {m.name!r} is not a plain relative file")
    return members
