"""RestClient listings and pagination, and safe checkpoint downloads (canned service)."""

from __future__ import annotations

import asyncio
import os
import tarfile
from pathlib import Path

import pytest

from tinkjax.client import RestClient, ServiceClient, UnsafeArchiveError, safe_extract
from tinkjax.errors import NotFoundError, WireFormatError

from .fake import FakeTinker, file_member, link_member, make_tar

RUN = "sess-1:train:0"


@pytest.fixture
def rest(service: ServiceClient) -> RestClient:
    return service.create_rest_client()


def test_listings_and_pagination(rest: RestClient, fake: FakeTinker) -> None:
    page = rest.list_training_runs(limit=3, offset=2).result(timeout=30)
    assert [r.training_run_id for r in page.training_runs] == [
        f"sess-1:train:{i}" for i in (2, 3, 4)
    ]
    assert page.cursor.total_count == 7
    assert [r.training_run_id[-1] for r in rest.iter_training_runs(page_size=3)] == list("0123456")
    assert len([r for r in fake.requests if r.url.path == "/api/v1/training_runs"]) == 4
    assert list(rest.iter_sessions(page_size=2)) == [f"s{i}" for i in range(5)]
    run = rest.get_training_run_by_tinker_path(f"tinker://{RUN}/weights/a").result(timeout=30)
    assert run.training_run_id == RUN
    assert run.lora_rank == 8
    with pytest.raises(WireFormatError, match="tinker://"):
        rest.get_training_run_by_tinker_path("s3://nope")
    caps = rest.get_server_capabilities().result(timeout=30)
    assert caps.supported_models[0].model_name == "tinkjax/bytelm-micro"
    info = rest.get_weights_info_by_tinker_path(f"tinker://{RUN}/weights/a").result(timeout=30)
    assert info.is_lora
    assert rest.get_sampler("sess-1:sample:0").result(timeout=30).base_model


def test_checkpoints_list_and_delete(
    service: ServiceClient, rest: RestClient, fake: FakeTinker
) -> None:
    tc = service.create_lora_training_client("tinkjax/bytelm-micro").result(timeout=30)
    paths = [tc.save_state(f"c{i}").result(timeout=30).path for i in range(3)]
    listed = rest.list_checkpoints(RUN).result(timeout=30)
    assert [c.tinker_path for c in listed.checkpoints] == paths
    assert [c.checkpoint_id for c in rest.iter_user_checkpoints(page_size=2)] == [
        "weights/c0",
        "weights/c1",
        "weights/c2",
    ]
    rest.delete_checkpoint_from_tinker_path(paths[1]).result(timeout=30)
    left = asyncio.run(_alist(rest))
    assert left == [paths[0], paths[2]]
    deletes = [r for r in fake.requests if r.method == "DELETE"]
    assert deletes[0].url.path == f"/api/v1/training_runs/{RUN}/checkpoints/weights/c1"


async def _alist(rest: RestClient) -> list[str]:
    return [c.tinker_path for c in (await rest.list_checkpoints_async(RUN)).checkpoints]


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
