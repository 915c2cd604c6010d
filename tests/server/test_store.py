"""Store: round trips, pagination, atomic overwrite, restart, archives, concurrency."""

from __future__ import annotations

import contextlib
import io
import tarfile
import threading
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import msgspec
import pytest

from tinkjax.errors import WireFormatError
from tinkjax.server._archive import safe_members
from tinkjax.server._store import (
    DuplicateIdError,
    InvalidNameError,
    Store,
    StoreError,
    UnknownCheckpointError,
    UnknownSamplerError,
    UnknownSessionError,
    UnknownTrainingRunError,
)
from tinkjax.types import (
    Checkpoint,
    CheckpointsListResponse,
    GetSessionResponse,
    TrainingRun,
    TrainingRunsResponse,
    WeightsInfoResponse,
)

SID = "3f2a9c1e-0000-4000-8000-000000000001"
MID = f"{SID}:train:0"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path)
    s.sessions.add(SID, tags=["t"], user_metadata={"k": "v"}, sdk_version="0.38.0")
    s.runs.add(MID, base_model="tinkjax/bytelm-micro", is_lora=True, lora_rank=4, session_id=SID)
    yield s
    s.close()


def _files(tag: bytes) -> dict[str, bytes]:
    return {
        "adapter_model.safetensors": b"W" * 10 + tag,
        "adapter_config.json": b"{}",
        "optim/state.bin": tag * 3,
    }


def _tar_contents(path: Path) -> dict[str, bytes]:
    with tarfile.open(path, "r:gz") as tar:
        members = safe_members(tar)
        out = {}
        for m in members:
            f = tar.extractfile(m)
            assert f is not None
            out[m.name] = f.read()
        return out


# -- sessions ----------------------------------------------------------------------------------


def test_session_round_trip_and_seqs(store: Store) -> None:
    store.sessions.add_sampler(f"{SID}:sample:0", base_model="tinkjax/bytelm-micro", session_id=SID)
    got = store.sessions.get(SID)
    assert got == GetSessionResponse(
        training_run_ids=[MID], sampler_ids=[f"{SID}:sample:0"], user_metadata={"k": "v"}
    )
    assert [store.sessions.next_model_seq(SID) for _ in range(3)] == [0, 1, 2]
    assert [store.sessions.next_sampler_seq(SID) for _ in range(2)] == [0, 1]
    store.sessions.heartbeat(SID)
    store.sessions.finish(SID, reason="success")
    status = store.sessions.status(SID)
    assert status["finish_reason"] == "success"
    assert isinstance(status["finished_at"], datetime)
    assert status["finished_at"].tzinfo is not None


def test_unknown_session_errors_name_the_id(store: Store) -> None:
    for call in (
        store.sessions.heartbeat,
        store.sessions.finish,
        store.sessions.get,
        store.sessions.next_model_seq,
    ):
        with pytest.raises(UnknownSessionError, match="nope") as info:
            call("nope")
        assert isinstance(info.value, KeyError)
        assert isinstance(info.value, StoreError)
        assert str(info.value) == "unknown session_id 'nope'"
    with pytest.raises(UnknownSessionError):
        store.runs.add(
            "x:train:0", base_model="b", is_lora=False, lora_rank=None, session_id="nope"
        )
    with pytest.raises(DuplicateIdError, match="session_id"):
        store.sessions.add(SID, tags=[], user_metadata=None, sdk_version="x")


def test_list_sessions_pagination(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    s = Store(tmp_path)
    request.addfinalizer(s.close)
    ids = [f"s{i}" for i in range(5)]
    for sid in ids:
        s.sessions.add(sid, tags=[], user_metadata=None, sdk_version="x")
    assert s.sessions.page(limit=2).sessions == ["s4", "s3"]
    assert s.sessions.page(limit=2, offset=2).sessions == ["s2", "s1"]
    assert s.sessions.page(limit=10, offset=4).sessions == ["s0"]
    with pytest.raises(InvalidNameError, match="limit"):
        s.sessions.page(limit=-1)


# -- training runs -----------------------------------------------------------------------------


def test_training_runs_round_trip_and_pagination(store: Store) -> None:
    for i in range(1, 5):
        store.runs.add(
            f"{SID}:train:{i}",
            base_model="b",
            is_lora=False,
            lora_rank=None,
            session_id=SID,
            user_metadata={"i": str(i)},
        )
    run = store.runs.get(MID)
    assert isinstance(run, TrainingRun)
    assert (run.training_run_id, run.base_model, run.is_lora, run.lora_rank) == (
        MID,
        "tinkjax/bytelm-micro",
        True,
        4,
    )
    assert run.last_checkpoint is None
    assert run.last_sampler_checkpoint is None
    page = store.runs.page(limit=2, offset=1)
    assert isinstance(page, TrainingRunsResponse)
    assert [r.training_run_id for r in page.training_runs] == [f"{SID}:train:3", f"{SID}:train:2"]
    assert (page.cursor.offset, page.cursor.limit, page.cursor.total_count) == (1, 2, 5)
    assert page.training_runs[0].user_metadata == {"i": "3"}
    before = store.runs.get(MID).last_request_time
    store.runs.touch(MID)
    assert store.runs.get(MID).last_request_time >= before
    with pytest.raises(UnknownTrainingRunError, match="missing"):
        store.runs.get("missing")
    with pytest.raises(DuplicateIdError):
        store.runs.add(MID, base_model="b", is_lora=False, lora_rank=None, session_id=None)
    # The wire encoding carries ISO 8601 datetimes.
    wire = msgspec.json.decode(msgspec.json.encode(page))
    datetime.fromisoformat(wire["training_runs"][0]["last_request_time"])


# -- checkpoints -------------------------------------------------------------------------------


def test_save_list_load_round_trip(store: Store) -> None:
    ck = store.checkpoints.save(
        MID, "weights", "step-1", _files(b"a"), meta={"step": 1}, user_metadata={"note": "x"}
    )
    assert isinstance(ck, Checkpoint)
    assert ck.checkpoint_id == "weights/step-1"
    assert ck.checkpoint_type == "training"
    assert ck.tinker_path == f"tinker://{MID}/weights/step-1"
    assert ck.size_bytes == sum(len(v) for v in _files(b"a").values())
    assert ck.user_metadata == {"note": "x"}
    sck = store.checkpoints.save(MID, "sampler_weights", "s1", {"a.bin": b"123"}, meta={})
    assert sck.checkpoint_type == "sampler"
    assert sck.tinker_path == f"tinker://{MID}/sampler_weights/s1"

    folder, meta = store.checkpoints.folder(ck.tinker_path)
    assert meta == {"step": 1}
    assert {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    } == _files(b"a")
    assert ":" not in folder.relative_to(store.data_dir).as_posix()

    listed = store.checkpoints.of_run(MID)
    assert isinstance(listed, CheckpointsListResponse)
    assert [c.checkpoint_id for c in listed.checkpoints] == ["weights/step-1", "sampler_weights/s1"]
    run = store.runs.get(MID)
    assert run.last_checkpoint == ck
    assert run.last_sampler_checkpoint == sck
    assert store.checkpoints.get(MID, "sampler_weights/s1") == sck
    with pytest.raises(UnknownTrainingRunError):
        store.checkpoints.of_run("nope:train:0")
    with pytest.raises(UnknownTrainingRunError):
        store.checkpoints.save("nope:train:0", "weights", "a", {"f": b""}, meta={})


def test_user_checkpoints_pagination(store: Store) -> None:
    for i in range(5):
        store.checkpoints.save(MID, "weights", f"c{i}", {"f": b"x"}, meta={})
    page = store.checkpoints.page(limit=2, offset=1)
    assert [c.checkpoint_id for c in page.checkpoints] == ["weights/c3", "weights/c2"]
    assert page.cursor is not None
    assert (page.cursor.offset, page.cursor.limit, page.cursor.total_count) == (1, 2, 5)


def test_overwrite_replaces_atomically(store: Store) -> None:
    first = store.checkpoints.save(
        MID, "weights", "w", {"old.bin": b"1", "same": b"1"}, meta={"v": 1}
    )
    arch1 = store.checkpoints.archive_path(MID, "weights/w")
    second = store.checkpoints.save(MID, "weights", "w", {"same": b"22"}, meta={"v": 2})
    folder, meta = store.checkpoints.folder(second.tinker_path)
    assert meta == {"v": 2}
    assert sorted(p.name for p in folder.iterdir()) == ["same"]
    assert (folder / "same").read_bytes() == b"22"
    assert second.size_bytes == 2
    assert first.size_bytes == 2
    assert [c.checkpoint_id for c in store.checkpoints.of_run(MID).checkpoints] == ["weights/w"]
    # No temp or old folders are left next to it; the cached archive was rebuilt.
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]
    assert folder.name.startswith("w@")
    assert first.tinker_path == second.tinker_path
    arch2 = store.checkpoints.archive_path(MID, "weights/w")
    assert arch2 != arch1
    assert not arch1.exists()
    assert _tar_contents(arch2) == {"same": b"22"}


@pytest.mark.parametrize(
    "name", ["", "..", "a/b", "../x", "a..b", ".hidden", "sp ace", "x" * 201, "é", "a\\b"]
)
def test_invalid_names_rejected(store: Store, name: str) -> None:
    with pytest.raises(InvalidNameError, match="name") as info:
        store.checkpoints.save(MID, "weights", name, {"f": b""}, meta={})
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, WireFormatError)
    assert info.value.field == "name"
    assert info.value.value == name


def test_invalid_kind_and_file_names_rejected(store: Store) -> None:
    with pytest.raises(InvalidNameError, match="kind"):
        store.checkpoints.save(MID, "bogus_weights", "a", {"f": b""}, meta={})  # type: ignore[arg-type]
    for bad in ("../evil", "/abs", "a//b", "sub/../x"):
        with pytest.raises(InvalidNameError, match="files"):
            store.checkpoints.save(MID, "weights", "a", {bad: b""}, meta={})
    with pytest.raises(InvalidNameError, match="which is a file"):
        store.checkpoints.save(MID, "weights", "a", {"d": b"", "d/x": b""}, meta={})
    with pytest.raises(InvalidNameError, match="not bytes"):
        store.checkpoints.save(MID, "weights", "a", {"d": "text"}, meta={})  # type: ignore[dict-item]
    with pytest.raises(InvalidNameError, match="checkpoint_id"):
        store.checkpoints.delete(MID, "weights")
    assert store.checkpoints.of_run(MID).checkpoints == []


def test_tinker_paths_with_colons(store: Store) -> None:
    store.checkpoints.save(MID, "sampler_weights", "final", {"f": b"z"}, meta={})
    folder, _ = store.checkpoints.folder(f"tinker://{MID}/sampler_weights/final")
    assert (folder / "f").read_bytes() == b"z"
    with pytest.raises(UnknownCheckpointError, match=r"tinker://.*:train:0/weights/final"):
        store.checkpoints.folder(f"tinker://{MID}/weights/final")
    with pytest.raises(UnknownCheckpointError):
        store.checkpoints.folder(f"tinker://{SID}:train:1/sampler_weights/final")
    with pytest.raises(UnknownCheckpointError):
        store.checkpoints.folder(f"tinker://{MID}/external_weights/final")
    store.checkpoints.save(MID, "external_weights", "final", {"f.age": b"x"}, meta={})
    folder, _ = store.checkpoints.folder(f"tinker://{MID}/external_weights/final")
    assert (folder / "f.age").read_bytes() == b"x"
    for bad in ("http://x/weights/a", f"tinker://{MID}/weights", f"tinker://{MID}/bogus/a"):
        with pytest.raises(WireFormatError, match="tinker_path"):
            store.checkpoints.folder(bad)


def test_delete(store: Store) -> None:
    ck = store.checkpoints.save(MID, "weights", "d", {"f": b"1"}, meta={})
    folder, _ = store.checkpoints.folder(ck.tinker_path)
    arch = store.checkpoints.archive_path(MID, "weights/d")
    store.checkpoints.delete(MID, "weights/d")
    assert not folder.exists()
    assert not arch.exists()
    assert store.checkpoints.of_run(MID).checkpoints == []
    assert store.runs.get(MID).last_checkpoint is None
    with pytest.raises(UnknownCheckpointError, match="weights/d") as info:
        store.checkpoints.delete(MID, "weights/d")
    assert isinstance(info.value, KeyError)
    with pytest.raises(UnknownCheckpointError):
        store.checkpoints.folder(ck.tinker_path)


def test_archive_contents_and_safety(store: Store) -> None:
    store.checkpoints.save(MID, "sampler_weights", "s", _files(b"q"), meta={})
    path = store.checkpoints.archive_path(MID, "sampler_weights/s")
    assert path.name.endswith(".tar.gz")
    assert store.checkpoints.archive_path(MID, "sampler_weights/s") == path  # cached
    mtime = path.stat().st_mtime_ns
    assert store.checkpoints.archive_path(MID, "sampler_weights/s").stat().st_mtime_ns == mtime
    assert _tar_contents(path) == _files(b"q")
    with tarfile.open(path, "r:gz") as tar:
        for m in tar.getmembers():
            assert not m.name.startswith("/")
            assert ".." not in m.name.split("/")
            assert m.isfile()
            assert m.uid == 0
    with pytest.raises(UnknownCheckpointError):
        store.checkpoints.archive_path(MID, "weights/none")


def test_safe_members_rejects_unsafe_archives() -> None:
    for name in ("/etc/passwd", "../up", "a/../../b"):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            info = tarfile.TarInfo(name)
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
        buf.seek(0)
        with (
            tarfile.open(fileobj=buf, mode="r:gz") as tar,
            pytest.raises(ValueError, match="member"),
        ):
            safe_members(tar)


def test_weights_info(store: Store) -> None:
    store.checkpoints.save(MID, "weights", "a", {"f": b""}, meta={})
    info = store.checkpoints.weights_info(f"tinker://{MID}/weights/a")
    assert info == WeightsInfoResponse(base_model="tinkjax/bytelm-micro", is_lora=True, lora_rank=4)
    store.checkpoints.save(
        MID,
        "sampler_weights",
        "b",
        {"f": b""},
        meta={
            "train_mlp": False,
            "train_attn": True,
            "train_unembed": True,
            "optimizer_config": {"type": "adamw"},
        },
    )
    info = store.checkpoints.weights_info(f"tinker://{MID}/sampler_weights/b")
    assert (info.train_mlp, info.train_attn, info.lora_rank) == (False, True, 4)
    with pytest.raises(UnknownCheckpointError):
        store.checkpoints.weights_info(f"tinker://{MID}/weights/zzz")


# -- restart -----------------------------------------------------------------------------------


def test_restart_sees_everything(store: Store, request: pytest.FixtureRequest) -> None:
    ck = store.checkpoints.save(MID, "weights", "keep", _files(b"r"), meta={"m": [1, 2]})
    store.checkpoints.save(MID, "sampler_weights", "gone", {"f": b"1"}, meta={})
    store.checkpoints.delete(MID, "sampler_weights/gone")
    store.sessions.add_sampler("smp", base_model="b", model_path=ck.tinker_path, session_id=SID)
    store.telemetry.add(SID, [{"event": "SESSION_START", "event_id": "e1"}])
    assert store.sessions.next_model_seq(SID) == 0
    runs = store.runs.page()
    store.close()

    again = Store(store.data_dir)
    request.addfinalizer(again.close)
    assert again.runs.page() == runs
    assert again.checkpoints.of_run(MID).checkpoints == [ck]
    folder, meta = again.checkpoints.folder(ck.tinker_path)
    assert meta == {"m": [1, 2]}
    assert (folder / "optim" / "state.bin").read_bytes() == b"rrr"
    assert again.sessions.get_sampler("smp").model_path == ck.tinker_path
    assert again.sessions.get(SID).sampler_ids == ["smp"]
    assert again.sessions.next_model_seq(SID) == 1
    assert [e["event_id"] for e in again.telemetry.query(session_id=SID)] == ["e1"]
    assert _tar_contents(again.checkpoints.archive_path(MID, "weights/keep")) == _files(b"r")


def test_restart_repairs_interrupted_writes(store: Store) -> None:
    store.checkpoints.save(MID, "weights", "w", {"f": b"new"}, meta={})
    folder, _ = store.checkpoints.folder(f"tinker://{MID}/weights/w")
    kdir = folder.parent
    store.close()
    # What kills can leave: a half-written temp folder, a staged version never committed,
    # a folder without a row, a temp archive.
    (kdir / ".tmp-w-cafe").mkdir()
    (kdir / ".tmp-w-cafe" / "f").write_bytes(b"torn")
    (kdir / "w@cafe").mkdir()
    (kdir / "w@cafe" / "f").write_bytes(b"uncommitted")
    (kdir / "orphan@beef").mkdir()
    arch = store.data_dir / "archives" / kdir.parent.name / "weights" / "w"
    arch.mkdir(parents=True)
    (arch / ".tmp-x.tar.gz-00").write_bytes(b"torn")
    (arch / "cafe.tar.gz").write_bytes(b"stale")
    with Store(store.data_dir) as again:
        assert [p.name for p in kdir.iterdir()] == [folder.name]
        folder2, _ = again.checkpoints.folder(f"tinker://{MID}/weights/w")
        assert (folder2 / "f").read_bytes() == b"new"
        assert not arch.exists()


def test_restart_migrates_unversioned_folders(store: Store) -> None:
    """A data dir of an older release (unversioned folders, a lone ``.old`` folder) still loads."""
    store.checkpoints.save(MID, "weights", "a", {"f": b"A"}, meta={})
    store.checkpoints.save(MID, "weights", "b", {"f": b"B"}, meta={})
    fa, _ = store.checkpoints.folder(f"tinker://{MID}/weights/a")
    fb, _ = store.checkpoints.folder(f"tinker://{MID}/weights/b")
    kdir = fa.parent
    store.close()
    fa.rename(kdir / "a")
    fb.rename(kdir / ".old-b-deadbeef")  # the old release was killed mid-overwrite of b
    with Store(store.data_dir) as again:
        for name, data in (("a", b"A"), ("b", b"B")):
            files, _ = again.checkpoints.read(f"tinker://{MID}/weights/{name}")
            assert files == {"f": data}
        assert sorted(p.name for p in kdir.iterdir()) == sorted([fa.name, fb.name])


# -- samplers and telemetry --------------------------------------------------------------------


def test_samplers(store: Store) -> None:
    a = store.sessions.add_sampler("s:a", base_model="b", session_id=SID)
    store.sessions.add_sampler(
        "s:b", base_model="b", model_path="tinker://m/sampler_weights/x", session_id=SID
    )
    assert store.sessions.get_sampler("s:a") == a
    assert [s.sampler_id for s in store.sessions.samplers(SID)] == ["s:a", "s:b"]
    with pytest.raises(UnknownSamplerError, match="s:z"):
        store.sessions.get_sampler("s:z")
    with pytest.raises(DuplicateIdError, match="sampler_id"):
        store.sessions.add_sampler("s:a", base_model="b", session_id=None)


def test_telemetry_kept_and_queryable(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    s = Store(tmp_path, max_telemetry_events=5)
    request.addfinalizer(s.close)
    s.telemetry.add(
        "s1",
        [
            {"event": "SESSION_START", "event_id": "1"},
            {
                "event": "GENERIC_EVENT",
                "event_id": "2",
                "event_name": "user_error",
                "event_data": {"status": 400},
            },
        ],
    )
    s.telemetry.add(None, [{"event": "GENERIC_EVENT", "event_id": "3", "event_name": "x"}])
    assert [e["event_id"] for e in s.telemetry.query()] == ["1", "2", "3"]
    assert [e["event_id"] for e in s.telemetry.query(session_id="s1")] == ["1", "2"]
    got = s.telemetry.query(event_name="user_error")
    assert got == [
        {
            "event": "GENERIC_EVENT",
            "event_id": "2",
            "event_name": "user_error",
            "event_data": {"status": 400},
            "session_id": "s1",
        }
    ]
    assert [e["event_id"] for e in s.telemetry.query(event_name="SESSION_START")] == ["1"]
    assert [e["event_id"] for e in s.telemetry.query(limit=2)] == ["2", "3"]
    s.telemetry.add("s2", [{"event": "SESSION_START", "event_id": str(i)} for i in range(4, 10)])
    assert [e["event_id"] for e in s.telemetry.query(limit=100)] == ["5", "6", "7", "8", "9"]


# -- concurrency -------------------------------------------------------------------------------


def test_concurrent_saves_and_reads(store: Store) -> None:
    errors: list[BaseException] = []
    stop = threading.Event()

    def writer(w: int) -> None:
        try:
            for i in range(15):
                store.checkpoints.save(
                    MID, "weights", f"w{w}-{i % 3}", {"f": bytes([i]) * 100}, meta={"i": i}
                )
                store.runs.touch(MID)
                store.telemetry.add(SID, [{"event": "GENERIC_EVENT", "event_id": f"{w}-{i}"}])
        except BaseException as exc:
            errors.append(exc)

    def reader() -> None:
        try:
            while not stop.is_set():
                for ck in store.checkpoints.of_run(MID).checkpoints:
                    try:
                        store.checkpoints.archive_path(MID, ck.checkpoint_id)
                        store.checkpoints.folder(ck.tinker_path)
                    except UnknownCheckpointError:
                        pass  # deleted meanwhile
                store.checkpoints.page()
                store.runs.get(MID)
        except BaseException as exc:
            errors.append(exc)

    def deleter() -> None:
        try:
            for _ in range(10):
                with contextlib.suppress(UnknownCheckpointError):
                    store.checkpoints.delete(MID, "weights/w0-0")
        except BaseException as exc:
            errors.append(exc)

    writers = [threading.Thread(target=writer, args=(w,)) for w in range(3)]
    others = [threading.Thread(target=reader) for _ in range(2)] + [
        threading.Thread(target=deleter)
    ]
    for t in writers + others:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    for t in others:
        t.join()
    assert errors == []
    names = {c.checkpoint_id for c in store.checkpoints.of_run(MID).checkpoints}
    assert {f"weights/w{w}-{i}" for w in (1, 2) for i in range(3)} <= names
    for ck in store.checkpoints.of_run(MID).checkpoints:
        folder, meta = store.checkpoints.folder(ck.tinker_path)
        # Each folder holds exactly the bytes of the save its row describes.
        assert (folder / "f").read_bytes() == bytes([meta["i"]]) * 100
        assert _tar_contents(store.checkpoints.archive_path(MID, ck.checkpoint_id)) == {
            "f": bytes([meta["i"]]) * 100
        }
    assert len(store.telemetry.query(session_id=SID, limit=1000)) == 45


def test_read_checkpoint_publish_ttl_and_purge(store: Store) -> None:
    ck = store.checkpoints.save(MID, "weights", "t", _files(b"p"), meta={"x": 1}, ttl_seconds=3600)
    assert ck.expires_at is not None
    assert 3590 < (ck.expires_at - ck.time).total_seconds() <= 3600
    files, meta = store.checkpoints.read(ck.tinker_path)
    assert files == _files(b"p")
    assert meta == {"x": 1}
    store.checkpoints.set_public(MID, "weights/t", True)
    assert store.checkpoints.get(MID, "weights/t").public is True
    store.checkpoints.save(MID, "weights", "keep", {"f": b""}, meta={})
    assert store.checkpoints.purge_expired() == []
    store.checkpoints.set_ttl(MID, "weights/t", 0)
    assert store.checkpoints.purge_expired() == [ck.tinker_path]
    assert [c.checkpoint_id for c in store.checkpoints.of_run(MID).checkpoints] == ["weights/keep"]
    store.checkpoints.set_ttl(MID, "weights/keep", None)
    assert store.checkpoints.get(MID, "weights/keep").expires_at is None
    with pytest.raises(InvalidNameError, match="ttl_seconds"):
        store.checkpoints.set_ttl(MID, "weights/keep", -5)
    with pytest.raises(UnknownCheckpointError):
        store.checkpoints.set_public(MID, "weights/t", False)


def test_touch_is_visible_at_once_and_persisted_on_close(store: Store) -> None:
    store.runs.touch(MID)  # written
    first = store.runs.get(MID).last_request_time
    store.runs.touch(MID)  # within a second: kept in memory
    second = store.runs.get(MID).last_request_time
    assert second >= first
    store.close()
    store.close()  # idempotent
    with Store(store.data_dir) as again:
        assert again.runs.get(MID).last_request_time == second
        with pytest.raises(UnknownTrainingRunError):
            again.runs.touch("nope")


def _expire(store: Store, checkpoint_id: str) -> None:
    """Move a checkpoint's ``expires_at`` into the past, as if its TTL ran out."""
    kind, name = checkpoint_id.split("/")
    with store.db.lock:
        store.db.execute(
            "UPDATE checkpoints SET expires_at=? WHERE model_id=? AND kind=? AND name=?",
            ("2000-01-01T00:00:00.000000+00:00", MID, kind, name),
        )


def test_expired_checkpoints_are_gone_before_purge_and_purged_on_open(store: Store) -> None:
    old = store.checkpoints.save(MID, "sampler_weights", "old", _files(b"o"), meta={})
    store.checkpoints.save(MID, "weights", "keep", _files(b"k"), meta={})
    folder, _ = store.checkpoints.folder(old.tinker_path)
    _expire(store, "sampler_weights/old")
    with pytest.raises(UnknownCheckpointError):
        store.checkpoints.get(MID, "sampler_weights/old")
    with pytest.raises(UnknownCheckpointError):
        store.checkpoints.folder(old.tinker_path)
    with pytest.raises(UnknownCheckpointError):
        store.checkpoints.files(MID, "sampler_weights/old")
    assert [c.checkpoint_id for c in store.checkpoints.of_run(MID).checkpoints] == ["weights/keep"]
    page = store.checkpoints.page(limit=10)
    assert [c.checkpoint_id for c in page.checkpoints] == ["weights/keep"]
    assert page.cursor is not None
    assert page.cursor.total_count == 1
    assert store.runs.get(MID).last_sampler_checkpoint is None
    assert folder.is_dir()  # hidden, not yet purged
    store.close()
    with Store(store.data_dir) as again:  # opening purges
        assert not folder.exists()
        assert again.checkpoints.purge_expired() == []
        # The name is free again.
        again.checkpoints.save(MID, "sampler_weights", "old", _files(b"n"), meta={})
        assert again.checkpoints.read(old.tinker_path)[0] == _files(b"n")


def test_files_open_file_publish_and_copy(store: Store) -> None:
    ck = store.checkpoints.save(
        MID, "external_weights", "e", _files(b"1"), meta={"base_model": "m"},
        user_metadata={"u": "1"}, ttl_seconds=60,
    )  # fmt: skip
    version, files = store.checkpoints.files(MID, "external_weights/e")
    assert files == {k: len(v) for k, v in _files(b"1").items()}
    with store.checkpoints.open_file(MID, "external_weights/e", version, "optim/state.bin") as f:
        store.checkpoints.save(MID, "external_weights", "e", _files(b"2"), meta={})
        assert f.read() == b"111"  # an open file outlives the overwrite
    with pytest.raises(UnknownCheckpointError):  # the old version is gone
        store.checkpoints.open_file(MID, "external_weights/e", version, "optim/state.bin")
    version2, _ = store.checkpoints.files(MID, "external_weights/e")
    for bad in ("../meta.sqlite", "optim/../../x", ".hidden"):
        with pytest.raises(InvalidNameError):
            store.checkpoints.open_file(MID, "external_weights/e", version2, bad)
    with pytest.raises(UnknownCheckpointError):
        store.checkpoints.open_file(MID, "external_weights/e", version2, "missing")
    assert store.checkpoints.set_public(MID, "external_weights/e", True) is True
    assert store.checkpoints.set_public(MID, "external_weights/e", True) is False
    assert store.checkpoints.is_public(ck.tinker_path) is True
    assert store.checkpoints.is_public("not a path") is False
    # A copy: same kind, name, files and user metadata; its own TTL; private.
    src = store.checkpoints.save(
        MID, "weights", "src", _files(b"s"), meta={"base_model": "m"}, user_metadata={"a": "b"},
        ttl_seconds=60,
    )  # fmt: skip
    store.checkpoints.set_public(MID, "weights/src", True)
    dest = f"{SID}:train:7"
    store.runs.add(dest, base_model="m", is_lora=True, lora_rank=4, session_id=SID)
    copy = store.checkpoints.copy(src.tinker_path, dest, ttl_seconds=None)
    assert copy.tinker_path == f"tinker://{dest}/weights/src"
    assert (copy.public, copy.expires_at, copy.user_metadata) == (False, None, {"a": "b"})
    assert store.checkpoints.read(copy.tinker_path) == store.checkpoints.read(src.tinker_path)
    store.checkpoints.delete(MID, "weights/src")
    assert store.checkpoints.read(copy.tinker_path)[0] == _files(b"s")
