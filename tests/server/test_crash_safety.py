"""Crash safety of checkpoints: kill -9 at every step of a save, an overwrite, a delete and an
archive (named crash points, not timing), restart, and check what survived.

Each case runs the store in a subprocess: a first one sets up acknowledged checkpoints (and
downloads archives of two of them), a second runs one operation with ``TINKJAX_CRASH_AT`` naming a
step and is killed there by ``SIGKILL``. The test then opens the store again and checks that each
checkpoint is whole and at the version of its last committed save: a step before the commit
leaves the acknowledged version (an unacknowledged save is not listed), a step after it the new
one (its answer was lost in the crash, as a lost response would be); loading gives the same
tensors as the listing's version, a download gives the same bytes as before the crash where that
version was downloaded before, and no temp or stale file is left.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from tinkjax.server._crashpoints import CRASH_ENV, STORE_CRASH_POINTS
from tinkjax.server._store import Store, UnknownCheckpointError
from tinkjax.server._weights import load_state, state_files

SID = "3f2a9c1e-0000-4000-8000-0000000000c5"
MID = f"{SID}:train:0"

_CHILD = r"""
import json, sys
from pathlib import Path
import numpy as np
from tinkjax.server._store import Store
from tinkjax.server._weights import state_files

SID, MID = sys.argv[3], sys.argv[4]
data_dir, phase = Path(sys.argv[1]), sys.argv[2]

def tensors(seed):
    rng = np.random.default_rng(seed)
    return {"lora.a": rng.standard_normal((4, 8)).astype(np.float32),
            "lora.b": rng.standard_normal((8, 4)).astype(np.float32)}

store = Store(data_dir)
if phase == "setup":
    store.sessions.add(SID, tags=[], user_metadata=None, sdk_version="x")
    store.runs.add(MID, base_model="tinkjax/bytelm-micro", is_lora=True, lora_rank=4,
                   session_id=SID)
    for name, seed in (("w", 1), ("d", 2), ("a", 3)):
        store.checkpoints.save(MID, "weights", name, state_files(tensors(seed)),
                               meta={"seed": seed})
    downloads = {n: store.checkpoints.archive_path(MID, f"weights/{n}").read_bytes().hex()
                 for n in ("w", "d")}
    (data_dir / "downloads.json").write_text(json.dumps(downloads))
elif phase == "save":
    store.checkpoints.save(MID, "weights", "n", state_files(tensors(4)), meta={"seed": 4})
elif phase == "overwrite":
    store.checkpoints.save(MID, "weights", "w", state_files(tensors(5)), meta={"seed": 5})
elif phase == "delete":
    store.checkpoints.delete(MID, "weights/d")
elif phase == "archive":
    store.checkpoints.archive_path(MID, "weights/a")
store.close()
print("ACK", flush=True)
"""

#: name → the seed of its tensors, before the operation.
_BEFORE = {"w": 1, "d": 2, "a": 3}
#: operation → the checkpoints once it has committed.
_AFTER = {
    "save": {**_BEFORE, "n": 4},
    "overwrite": {**_BEFORE, "w": 5},
    "delete": {"w": 1, "a": 3},
    "archive": _BEFORE,
}
_CASES = [
    (op, point)
    for op, group in (
        ("save", "save"),
        ("overwrite", "save"),
        ("delete", "delete"),
        ("archive", "archive"),
    )
    for point in STORE_CRASH_POINTS[group]
]


def _tensors(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "lora.a": rng.standard_normal((4, 8)).astype(np.float32),
        "lora.b": rng.standard_normal((8, 4)).astype(np.float32),
    }


def _run(data_dir: Path, phase: str, crash_at: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != CRASH_ENV}
    if crash_at is not None:
        env[CRASH_ENV] = crash_at
    return subprocess.run(
        [sys.executable, "-c", _CHILD, str(data_dir), phase, SID, MID],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _tar_files(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        out = {}
        for m in tar.getmembers():
            f = tar.extractfile(m)
            assert f is not None
            out[m.name] = f.read()
        return out


@pytest.fixture(scope="module")
def acknowledged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir with acknowledged checkpoints w, d, a (w and d downloaded), made once."""
    data_dir = tmp_path_factory.mktemp("acknowledged")
    setup = _run(data_dir, "setup", None)
    assert setup.returncode == 0, setup.stderr
    assert "ACK" in setup.stdout
    return data_dir


@pytest.mark.parametrize(("op", "point"), _CASES, ids=[f"{o}-{p}" for o, p in _CASES])
def test_kill_at_each_step_keeps_every_acknowledged_checkpoint(
    acknowledged: Path, tmp_path: Path, op: str, point: str
) -> None:
    tmp_path = tmp_path / "data"
    shutil.copytree(acknowledged, tmp_path)
    downloads = {
        k: bytes.fromhex(v)
        for k, v in json.loads((tmp_path / "downloads.json").read_text()).items()
    }

    crashed = _run(tmp_path, op, point)
    assert crashed.returncode == -signal.SIGKILL, (crashed.returncode, crashed.stderr)
    assert "ACK" not in crashed.stdout

    committed = point in ("save.committed", "save.cleaned") or op == "delete"
    expected = _AFTER[op] if committed else _BEFORE
    with Store(tmp_path) as store:
        listed = {c.checkpoint_id: c for c in store.checkpoints.of_run(MID).checkpoints}
        assert sorted(listed) == sorted(f"weights/{n}" for n in expected)
        for name, seed in expected.items():
            path = f"tinker://{MID}/weights/{name}"
            folder, meta = store.checkpoints.folder(path)
            assert meta == {"seed": seed}
            loaded = load_state(folder)
            want = _tensors(seed)
            assert loaded.keys() == want.keys()
            for k in want:
                np.testing.assert_array_equal(loaded[k], want[k])
            files, _ = store.checkpoints.read(path)
            assert files == state_files(want)
            archive = store.checkpoints.archive_path(MID, f"weights/{name}").read_bytes()
            assert _tar_files(archive) == files
            if name in downloads and seed == _BEFORE[name]:
                assert archive == downloads[name]  # the same bytes as the download before
        for name in (set(_BEFORE) | {"n"}) - set(expected):
            with pytest.raises(UnknownCheckpointError):
                store.checkpoints.folder(f"tinker://{MID}/weights/{name}")
        # Nothing else is left on disk: one folder per row, archives of current versions only.
        kdir = folder.parent
        versions = {
            n: store.checkpoints.folder(f"tinker://{MID}/weights/{n}")[0].name for n in expected
        }
        assert sorted(p.name for p in kdir.iterdir()) == sorted(versions.values())
        archives = store.data_dir / "archives"
        for f in archives.rglob("*"):
            if f.is_file():
                assert not f.name.startswith(".tmp-"), f
                assert f"{f.parent.name}@{f.name.removesuffix('.tar.gz')}" in versions.values(), f
        # The store keeps working: overwrite the checkpoint again.
        store.checkpoints.save(MID, "weights", "w", state_files(_tensors(9)), meta={"seed": 9})
        files, meta = store.checkpoints.read(f"tinker://{MID}/weights/w")
        assert meta == {"seed": 9}
        assert files == state_files(_tensors(9))
