"""Crash repair of the checkpoint folders and archives (see :mod:`._store_checkpoints`): what
a kill at any step of a save or delete can leave, removed or put back when the store opens."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Mapping
from pathlib import Path

from ._archive import fsync_dir

__all__ = ["VERSION_SEP", "recover_archives", "recover_kind_dir"]

VERSION_SEP = "@"  # never in a name (see validate_name): ``<name>@<version>`` folders


def recover_kind_dir(
    kdir: Path, model_dir: str, kind: str, current: Mapping[tuple[str, str, str], str]
) -> None:
    """Repair one ``<model dir>/<kind>`` folder (see ``Checkpoints._recover``)."""
    entries = sorted(kdir.iterdir())
    # A data dir of an older release: ``.old-<name>-<hex>`` (an overwrite moved the old folder
    # aside) and unversioned ``<name>`` folders. Put a lone ``.old`` back, then give the
    # folder of each row its versioned name.
    for entry in entries:
        if entry.name.startswith(".old-"):
            name = entry.name[len(".old-") :].rsplit("-", 1)[0]
            if (kdir / name).exists():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.rename(kdir / name)
    for entry in sorted(kdir.iterdir()):
        if entry.name.startswith(".") or VERSION_SEP in entry.name:
            continue
        version = current.get((model_dir, kind, entry.name))
        versioned = kdir / f"{entry.name}{VERSION_SEP}{version}"
        if version is not None and not versioned.exists():
            entry.rename(versioned)
        else:
            shutil.rmtree(entry, ignore_errors=True)
    for entry in sorted(kdir.iterdir()):
        name, sep, version = entry.name.rpartition(VERSION_SEP)
        if entry.name.startswith(".") or not sep or current.get((model_dir, kind, name)) != version:
            # a temp folder, a staged save never committed, or a version replaced or deleted
            shutil.rmtree(entry, ignore_errors=True)
    fsync_dir(kdir)


def recover_archives(archives_root: Path, current: Mapping[tuple[str, str, str], str]) -> None:
    """Remove temp archives and the archives of versions no row names (lock held)."""
    for name_dir in sorted(archives_root.glob("*/*/*")):
        model_dir, kind = name_dir.parent.parent.name, name_dir.parent.name
        version = current.get((model_dir, kind, name_dir.name))
        if not name_dir.is_dir() or name_dir.is_symlink():
            name_dir.unlink(missing_ok=True)
            continue
        for entry in list(name_dir.iterdir()):
            if version is not None and entry.name == f"{version}.tar.gz" and entry.is_file():
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:  # a temp file (TEMP_PREFIX) or an archive of another version
                entry.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            name_dir.rmdir()  # only when empty
