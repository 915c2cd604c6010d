"""Safe checkpoint downloads: ``RestClient.download_checkpoint`` and ``CheckpointDownload``
(a transport and a URL) against the canned service, and ``safe_extract``'s rules."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import pytest

from tinkjax.client import (
    CheckpointDownload,
    RestClient,
    ServiceClient,
    UnsafeArchiveError,
    safe_extract,
)
from tinkjax.errors import NotFoundError

from .fake import FakeTinker, file_member, link_member, make_tar

RUN = "sess-1:train:0"


@pytest.fixture
def rest(service: ServiceClient) -> RestClient:
    return service.create_rest_client()


def _serve(fake: FakeTinker, name: str, data: bytes) -> str:
    fake.archives[f"{RUN}/sampler_weights/{name}"] = data
    return f"tinker://{RUN}/sampler_weights/{name}"


def test_download_extracts_with_progress_and_force(
    rest: RestClient, fake: FakeTinker, tmp_path: Path
) -> None:
    payload = os.urandom(300_000)
    path = _serve(
        fake,
        "good",
        make_tar(
            [
                file_member("adapter_model.safetensors", payload),
                file_member("sub/config.json", b"{}"),
                link_member("alias.json", "sub/config.json"),
            ]
        ),
    )
    seen: list[tuple[int, int | None]] = []
    out = rest.download_checkpoint(
        path, tmp_path / "ckpt", progress=lambda d, t: seen.append((d, t)), progress_bar=False
    ).result(timeout=30)
    assert (out / "adapter_model.safetensors").read_bytes() == payload
    assert (out / "alias.json").read_bytes() == b"{}"
    assert seen
    assert seen[-1][0] == seen[-1][1]
    with pytest.raises(FileExistsError, match="force=True"):
        rest.download_checkpoint(path, out).result(timeout=30)
    (out / "stale.txt").write_text("old")
    rest.download_checkpoint(path, out, force=True, progress_bar=False).result(timeout=30)
    assert not (out / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temp files left
    with pytest.raises(NotFoundError):
        rest.download_checkpoint(f"tinker://{RUN}/weights/missing", tmp_path / "m").result(
            timeout=30
        )


@pytest.mark.parametrize(
    "members",
    [
        [file_member("ok.txt", b"x"), file_member("../evil.txt", b"pwned")],
        [file_member("a/../../evil.txt", b"pwned")],
        [file_member("/tmp/tinkjax-evil-abs.txt", b"pwned")],
        [link_member("link", "../../outside")],
        [link_member("link", "/etc/passwd")],
        [link_member("hard", "../evil.txt", hard=True)],
    ],
    ids=["dotdot", "nested-dotdot", "absolute", "symlink-out", "symlink-abs", "hardlink-out"],
)
def test_malicious_archives_extract_nothing(
    rest: RestClient,
    fake: FakeTinker,
    tmp_path: Path,
    members: list[tuple[tarfile.TarInfo, bytes | None]],
) -> None:
    root = tmp_path / "area"
    root.mkdir()
    path = _serve(fake, "evil", make_tar(members))
    with pytest.raises(UnsafeArchiveError):
        rest.download_checkpoint(path, root / "out", progress_bar=False).result(timeout=30)
    assert list(root.iterdir()) == []
    assert list(tmp_path.iterdir()) == [root]
    assert not Path("/tmp/tinkjax-evil-abs.txt").exists()


def test_device_files_and_size_limits(tmp_path: Path) -> None:
    dev = tarfile.TarInfo("dev")
    dev.type = tarfile.CHRTYPE
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(make_tar([(dev, None)]))
    with pytest.raises(UnsafeArchiveError, match="special"):
        safe_extract(archive, tmp_path / "o1")
    archive.write_bytes(make_tar([file_member(f"f{i}", b"0123456789") for i in range(5)]))
    with pytest.raises(UnsafeArchiveError, match="members"):
        safe_extract(archive, tmp_path / "o2", max_members=3)
    with pytest.raises(UnsafeArchiveError, match="bytes"):
        safe_extract(archive, tmp_path / "o3", max_extracted_bytes=25)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tar.gz"]
    assert sorted(p.name for p in safe_extract(archive, tmp_path / "o4").iterdir()) == [
        f"f{i}" for i in range(5)
    ]


def test_checkpoint_download_takes_a_transport_and_a_url(
    rest: RestClient, fake: FakeTinker, tmp_path: Path
) -> None:
    path = _serve(fake, "direct", make_tar([file_member("a.txt", b"abc")]))
    url = rest.get_checkpoint_archive_url_from_tinker_path(path).result(timeout=30)
    dl = CheckpointDownload(rest.transport, url, tmp_path / "out", progress_bar=False)
    assert dl.label == url
    assert (dl.run() / "a.txt").read_bytes() == b"abc"
    with pytest.raises(FileExistsError, match="force=True"):
        dl.run()
