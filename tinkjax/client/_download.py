"""``CheckpointDownload``: stream a checkpoint archive to a temporary file, extract it safely;
``ExternalWeightsDownload``: fetch the files of an ``external_weights`` checkpoint from their
signed links (and decrypt age-encrypted ones), into a staging folder moved into place at the end.

Safety rules of the extraction (any violation raises :class:`UnsafeArchiveError` and leaves
nothing behind — the archive is extracted into a temporary folder next to the output folder
and only moved into place once every member passed):

* member names must be relative, without ``..`` components;
* only regular files and folders; symlinks and hard links are allowed only when their target
  stays inside the output folder; devices, FIFOs and other special files are refused;
* at most ``max_members`` members and ``max_extracted_bytes`` bytes in total; the download
  itself stops past ``max_archive_bytes``.
"""

from __future__ import annotations

import importlib
import os
import posixpath
import shutil
import sys
import tarfile
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from tinkjax.errors import TinkerError
from tinkjax.types import ExternalWeightsUrlsResponse

from ._futures import APIFuture
from ._loop import submit
from ._transport import Transport

__all__ = [
    "CheckpointDownload",
    "ExternalWeightsDownload",
    "UnsafeArchiveError",
    "check_output_dir",
    "safe_extract",
]

ProgressCallback = Callable[[int, int | None], None]


class UnsafeArchiveError(TinkerError, ValueError):
    """An archive member would escape the output folder, is a special file, or the archive
    exceeds a size limit. Nothing was extracted."""


def _check_member(member: tarfile.TarInfo, root: str) -> None:
    name = member.name
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise UnsafeArchiveError(f"archive member {name!r} has an absolute path")
    norm = posixpath.normpath(name)
    if norm == ".." or norm.startswith("../") or "/../" in f"/{name}/".replace("\\", "/"):
        raise UnsafeArchiveError(f"archive member {name!r} escapes the output folder (..)")
    if (
        member.isdev()
        or member.isfifo()
        or not (member.isfile() or member.isdir() or member.issym() or member.islnk())
    ):
        raise UnsafeArchiveError(f"archive member {name!r} is a special file")
    if member.issym() or member.islnk():
        target = member.linkname
        if target.startswith("/") or os.path.isabs(target):
            raise UnsafeArchiveError(f"link {name!r} points to the absolute path {target!r}")
        base = posixpath.dirname(norm) if member.issym() else ""
        resolved = posixpath.normpath(posixpath.join(base, target))
        if resolved == ".." or resolved.startswith("../"):
            raise UnsafeArchiveError(f"link {name!r} points outside the output folder")
    dest = os.path.realpath(os.path.join(root, norm))
    if not (dest == root or dest.startswith(root + os.sep)):
        raise UnsafeArchiveError(f"archive member {name!r} resolves outside the output folder")


def safe_extract(
    archive: str | Path,
    output_dir: str | Path,
    *,
    max_members: int = 10_000,
    max_extracted_bytes: int = 64 * 2**30,
) -> Path:
    """Extract the tar(.gz) ``archive`` into the new folder ``output_dir`` (must not exist).

    Raises:
        UnsafeArchiveError: a member breaks a rule (see the module docstring); nothing is left
            behind.
        FileExistsError: ``output_dir`` exists.
    """
    out = Path(output_dir)
    if out.exists():
        raise FileExistsError(f"output folder {str(out)!r} exists")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.extract-", dir=out.parent))
    root = os.path.realpath(staging)
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = []
            total = 0
            for member in tar:
                members.append(member)
                if len(members) > max_members:
                    raise UnsafeArchiveError(f"archive has more than {max_members} members")
                _check_member(member, root)
                total += max(member.size, 0)
                if total > max_extracted_bytes:
                    raise UnsafeArchiveError(
                        f"archive expands to more than {max_extracted_bytes} bytes"
                    )
            for member in members:
                if member.isdir():
                    (staging / member.name).mkdir(parents=True, exist_ok=True)
                    continue
                dest = staging / posixpath.normpath(member.name)
                dest.parent.mkdir(parents=True, exist_ok=True)
                if member.issym():
                    os.symlink(member.linkname, dest)
                    continue
                if member.islnk():
                    os.link(staging / posixpath.normpath(member.linkname), dest)
                    continue
                src = tar.extractfile(member)
                if src is None:
                    raise UnsafeArchiveError(f"archive member {member.name!r} has no data")
                with src, open(dest, "wb") as f:
                    shutil.copyfileobj(src, f, 1 << 20)
                os.chmod(dest, 0o644)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def check_output_dir(output_dir: Path, force: bool) -> None:
    """Raises ``FileExistsError`` when ``output_dir`` exists and ``force`` is false."""
    if output_dir.exists() and not force:
        raise FileExistsError(
            f"output folder {str(output_dir)!r} exists; pass force=True to replace it"
        )


class CheckpointDownload:
    """Download one checkpoint archive and extract it into ``output_dir``.

    :meth:`RestClient.download_checkpoint` asks the service for the archive URL of a
    ``tinker://`` path and runs one of these.

    Args:
        transport: the transport to stream the archive with (the API key is only sent to the
            service's own URLs).
        url: the archive's URL (absolute, or ``/api/v1/...``).
        output_dir: the folder to create with the checkpoint's files.
        force: replace ``output_dir`` if it exists (otherwise ``FileExistsError``).
        progress: called as ``progress(bytes_done, bytes_total_or_None)`` while downloading.
        progress_bar: show a tqdm bar; ``None`` shows one when stderr is a terminal.
        max_archive_bytes / max_extracted_bytes / max_members: safety limits.
        label: what the progress bar shows (the URL by default).
    """

    def __init__(
        self,
        transport: Transport,
        url: str,
        output_dir: str | Path,
        *,
        label: str | None = None,
        force: bool = False,
        progress: ProgressCallback | None = None,
        progress_bar: bool | None = None,
        max_archive_bytes: int = 32 * 2**30,
        max_extracted_bytes: int = 64 * 2**30,
        max_members: int = 10_000,
    ) -> None:
        self.transport = transport
        self.url = url
        self.label = url if label is None else label
        self.output_dir = Path(output_dir)
        self.force = force
        self.progress = progress
        self.progress_bar = sys.stderr.isatty() if progress_bar is None else progress_bar
        self.max_archive_bytes = max_archive_bytes
        self.max_extracted_bytes = max_extracted_bytes
        self.max_members = max_members

    def run(self) -> Path:
        """Download and extract (blocks); returns the output folder."""
        return APIFuture(submit(self.run_async())).result()

    async def run_async(self) -> Path:
        """Async twin of :meth:`run`."""
        check_output_dir(self.output_dir, self.force)
        self.output_dir.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(
            prefix=".tinkjax-download-", suffix=".tar.gz", dir=self.output_dir.parent
        )
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as f:
                await self._stream(self.url, f)
            fresh = self.output_dir.with_name(f".{self.output_dir.name}.new-{uuid.uuid4().hex}")
            safe_extract(
                tmp,
                fresh,
                max_members=self.max_members,
                max_extracted_bytes=self.max_extracted_bytes,
            )
            if self.output_dir.exists():
                old = self.output_dir.with_name(f".{self.output_dir.name}.old-{uuid.uuid4().hex}")
                os.replace(self.output_dir, old)
                os.replace(fresh, self.output_dir)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(fresh, self.output_dir)
        finally:
            tmp.unlink(missing_ok=True)
        return self.output_dir

    async def _stream(self, url: str, f: Any) -> None:
        bar = None
        async with self.transport.stream(url) as response:
            length = response.headers.get("content-length")
            total = int(length) if length and length.isdigit() else None
            if total is not None and total > self.max_archive_bytes:
                raise UnsafeArchiveError(
                    f"archive is {total} bytes, over max_archive_bytes={self.max_archive_bytes}"
                )
            if self.progress_bar:
                from tqdm import tqdm

                bar = tqdm(total=total, unit="B", unit_scale=True, desc=self.label)
            done = 0
            try:
                async for block in response.aiter_bytes(1 << 20):
                    done += len(block)
                    if done > self.max_archive_bytes:
                        raise UnsafeArchiveError(
                            f"archive exceeds max_archive_bytes={self.max_archive_bytes}"
                        )
                    f.write(block)
                    if bar is not None:
                        bar.update(len(block))
                    if self.progress is not None:
                        self.progress(done, total)
            finally:
                if bar is not None:
                    bar.close()


def _move_into_place(fresh: Path, output_dir: Path) -> None:
    """Replace ``output_dir`` (if any) by the complete folder ``fresh``."""
    if output_dir.exists():
        old = output_dir.with_name(f".{output_dir.name}.old-{uuid.uuid4().hex}")
        os.replace(output_dir, old)
        os.replace(fresh, output_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(fresh, output_dir)


def _check_file_name(name: str) -> str:
    """A checkpoint file's relative name, refused when it could leave the output folder."""
    norm = posixpath.normpath(name)
    if (
        not name
        or name.startswith(("/", "\\"))
        or "\\" in name
        or (len(name) > 1 and name[1] == ":")
        or norm != name
        or norm == ".."
        or norm.startswith("../")
    ):
        raise UnsafeArchiveError(f"checkpoint file {name!r} is not a plain relative path")
    return name


class ExternalWeightsDownload:
    """Download every file of an ``external_weights`` checkpoint into ``output_dir``.

    :meth:`RestClient.download_checkpoint` runs one for an ``external_weights/`` path.
    The links are signed again (``sign``) when they are about to expire. With ``age_identity``
    every file must be age-encrypted (``<file>.age``); it is decrypted (by ``pyrage``) and
    written without the suffix. Nothing appears in ``output_dir`` until every file arrived.

    Args:
        transport: the transport to fetch the links with.
        sign: gets the checkpoint's links (``RestClient.get_external_weights_urls``).
        output_dir: the folder to create.
        force: replace ``output_dir`` if it exists (otherwise ``FileExistsError``).
        age_identity: an age identity (``AGE-SECRET-KEY-1...``) to decrypt with.
        progress: called as ``progress(bytes_done, None)`` while downloading.
        max_file_bytes: the largest file accepted.
        refresh_margin_s: sign again when the links expire within this many seconds.
    """

    def __init__(
        self,
        transport: Transport,
        sign: Callable[[], Awaitable[ExternalWeightsUrlsResponse]],
        output_dir: str | Path,
        *,
        force: bool = False,
        age_identity: str | None = None,
        progress: ProgressCallback | None = None,
        max_file_bytes: int = 32 * 2**30,
        refresh_margin_s: float = 60.0,
    ) -> None:
        self.transport = transport
        self.sign = sign
        self.output_dir = Path(output_dir)
        self.force = force
        self.age_identity = age_identity
        self.progress = progress
        self.max_file_bytes = max_file_bytes
        self.refresh_margin_s = refresh_margin_s

    def _identity(self) -> tuple[Any, Any] | None:
        if self.age_identity is None:
            return None
        try:
            pyrage: Any = importlib.import_module("pyrage")
        except ImportError:
            raise ImportError(
                "decrypting age-encrypted weights needs the 'pyrage' package "
                "(pip install 'tinkjax[age]')"
            ) from None
        try:
            return pyrage, pyrage.x25519.Identity.from_str(self.age_identity.strip())
        except pyrage.IdentityError as exc:
            raise ValueError(f"age_identity: not an age X25519 identity ({exc})") from None

    async def run_async(self) -> Path:
        """Download (and decrypt); returns the output folder."""
        check_output_dir(self.output_dir, self.force)
        identity = self._identity()
        links = await self.sign()
        if not links.urls:
            raise TinkerError("the external weights checkpoint has no files")
        outputs: dict[str, str] = {}
        for name in links.urls:
            out = _check_file_name(name)
            if identity is not None:
                if not name.endswith(".age"):
                    raise TinkerError(f"{name!r} is not age-encrypted (no .age suffix)")
                out = _check_file_name(name.removesuffix(".age"))
            outputs[name] = out
        self.output_dir.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(
            tempfile.mkdtemp(prefix=f".{self.output_dir.name}.new-", dir=self.output_dir.parent)
        )
        try:
            done = 0
            for name, out in sorted(outputs.items()):
                if time.time() >= links.expires.timestamp() - self.refresh_margin_s:
                    links = await self.sign()
                url = links.urls.get(name)
                if url is None:
                    raise TinkerError(f"{name!r} is missing from the newly signed links")
                fetched = staging / (name if identity is None else f".{uuid.uuid4().hex}.age")
                fetched.parent.mkdir(parents=True, exist_ok=True)
                with open(fetched, "wb") as f:
                    done = await self._stream(url, f, done)
                if identity is not None:
                    pyrage, key = identity
                    dest = staging / out
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    try:
                        pyrage.decrypt_file(str(fetched), str(dest), [key])
                    except pyrage.DecryptError as exc:
                        raise TinkerError(f"cannot decrypt {name!r}: {exc}") from exc
                    fetched.unlink()
            _move_into_place(staging, self.output_dir)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return self.output_dir

    async def _stream(self, url: str, f: Any, done: int) -> int:
        size = 0
        async with self.transport.stream(url) as response:
            async for block in response.aiter_bytes(1 << 20):
                size += len(block)
                if size > self.max_file_bytes:
                    raise UnsafeArchiveError(f"a file exceeds max_file_bytes={self.max_file_bytes}")
                f.write(block)
                done += len(block)
                if self.progress is not None:
                    self.progress(done, None)
        return done
