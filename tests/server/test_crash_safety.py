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
from typing import Any

import httpx
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


def _serve(data_dir: Path, crash_at: str | None) -> tuple[subprocess.Popen[str], str]:
    env = {k: v for k, v in os.environ.items() if k != CRASH_ENV}
    if crash_at is not None:
        env[CRASH_ENV] = crash_at
    cmd = [sys.executable, "-m", "tinkjax.cli", "serve", "--port", "0", "--data-dir", str(data_dir)]
    # cwd: not the repository, whose tinkjax/ folder lacks tinkjax.kernels (mapped by the install)
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=data_dir
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert "http://" in line, line
    return proc, line.split("listening on ", 1)[1].split()[0]


def test_server_killed_mid_overwrite_serves_the_acknowledged_state(tmp_path: Path) -> None:
    """Through the HTTP API: a saved state is acknowledged, the model trains on, the overwrite
    of that state is killed between staging and commit; the restarted server lists it once,
    downloads the same archive bytes and loads the acknowledged weights."""
    from .conftest import ce_datum, fwdbwd_body, new_model, new_session, post, result

    def done(http: httpx.Client, r: httpx.Response) -> dict[str, Any]:
        assert r.status_code == 200, r.text
        out = result(http, r.json()["request_id"])
        assert out.status_code == 200, out.text
        assert "error" not in out.json(), out.text
        return dict(out.json())

    def step(http: httpx.Client, model: str, seq: int) -> None:
        done(http, post(http, "forward_backward", fwdbwd_body(model, seq, [datum])))
        adam = {"learning_rate": 0.05}
        done(
            http,
            post(http, "optim_step", {"model_id": model, "seq_id": seq + 1, "adam_params": adam}),
        )

    def logprobs(http: httpx.Client, model: str, seq: int) -> list[float]:
        out = done(http, post(http, "forward", fwdbwd_body(model, seq, [datum], forward=True)))
        return list(out["loss_fn_outputs"][0]["logprobs"]["data"])

    def download(http: httpx.Client, model: str) -> bytes:
        link = http.get(f"/api/v1/training_runs/{model}/checkpoints/weights/s/archive")
        assert link.status_code == 302, link.text
        return http.get(link.headers["location"]).content

    def wait_forever(http: httpx.Client, request_id: str) -> None:
        for _ in range(100):
            result(http, request_id)

    datum = ce_datum(list(b"crash safety of checkpoints"))
    headers = {"X-API-Key": "tml-crash-test"}
    proc, url = _serve(tmp_path, "save.staged:2")
    try:
        with httpx.Client(base_url=url, timeout=120, headers=headers) as http:
            model = new_model(http, new_session(http))
            step(http, model, 1)
            saved = done(
                http, post(http, "save_weights", {"model_id": model, "path": "s", "seq_id": 3})
            )
            acknowledged = logprobs(http, model, 4)
            acknowledged_bytes = download(http, model)
            step(http, model, 5)
            assert logprobs(http, model, 7) != acknowledged  # the model moved on
            overwrite = {"model_id": model, "path": "s", "seq_id": 8, "overwrite": True}
            r = post(http, "save_weights", overwrite)
            assert r.status_code == 200, r.text
            with pytest.raises(httpx.TransportError):  # the server dies while saving
                wait_forever(http, r.json()["request_id"])
        assert proc.wait(60) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    proc, url = _serve(tmp_path, None)
    try:
        with httpx.Client(base_url=url, timeout=120, headers=headers) as http:
            listed = http.get(f"/api/v1/training_runs/{model}/checkpoints").json()["checkpoints"]
            assert [c["tinker_path"] for c in listed] == [saved["path"]]
            assert download(http, model) == acknowledged_bytes
            sid = new_session(http)
            body = {"session_id": sid, "model_seq_id": 0, "path": saved["path"], "optimizer": True}
            loaded = done(http, post(http, "load_weights", body))["model_id"]
            np.testing.assert_allclose(
                logprobs(http, loaded, 1), acknowledged, rtol=1e-6, atol=1e-6
            )
    finally:
        proc.terminate()
        proc.wait(30)
