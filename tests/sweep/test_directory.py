"""The sweep directory: its manifest refuses another sweep, its log survives a torn write."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tinkjax.sweep import SweepDirectoryError, expand
from tinkjax.sweep._config import fingerprint
from tinkjax.sweep._directory import SweepDirectory, replay

SETTINGS = {"steps": 3, "step": "m:f", "checkpoint_every": None}


def _open(path: Path, grid: dict) -> SweepDirectory:
    specs = expand({}, grid)
    return SweepDirectory(path, fingerprint(specs, SETTINGS), specs, SETTINGS)


def test_a_directory_holding_another_sweep_is_refused_naming_the_file(tmp_path: Path) -> None:
    _open(tmp_path, {"seed": [0, 1]}).close()
    _open(tmp_path, {"seed": [0, 1]}).close()  # the same sweep: fine
    with pytest.raises(SweepDirectoryError, match=r"sweep\.json holds a different sweep"):
        _open(tmp_path, {"seed": [0, 2]})
    (tmp_path / "sweep.json").write_text("{not json")
    with pytest.raises(SweepDirectoryError, match=r"sweep\.json: not a tinkjax sweep manifest"):
        _open(tmp_path, {"seed": [0, 1]})


def test_replay_supersedes_rows_past_a_resume_and_tracks_status(tmp_path: Path) -> None:
    d = _open(tmp_path, {"seed": [0]})
    for step in range(3):
        d.append({"kind": "row", "run": "a", "step": step, "loss": float(step)})
    d.append({"kind": "checkpoint", "run": "a", "step": 1, "path": "tinker://m/weights/x"})
    d.append({"kind": "resume", "run": "a", "step": 1})
    d.append({"kind": "row", "run": "a", "step": 2, "loss": 20.0})
    d.append({"kind": "finished", "run": "a", "status": "completed"})
    d.append(
        {
            "kind": "failed",
            "run": "b",
            "attempt": 1,
            "error_type": "E",
            "error": "x",
            "final": False,
        }
    )
    d.append(
        {"kind": "failed", "run": "b", "attempt": 2, "error_type": "E", "error": "y", "final": True}
    )
    d.close()
    runs = replay(tmp_path / "results.jsonl")
    assert [(r["step"], r["loss"]) for r in runs["a"].rows] == [(0, 0.0), (1, 1.0), (2, 20.0)]
    assert runs["a"].checkpoint == (1, "tinker://m/weights/x")
    assert runs["a"].status == "completed"
    assert runs["b"].status == "failed"
    assert runs["b"].attempts == 2
    assert runs["b"].error == "E: y"


def test_a_torn_last_line_is_ignored_and_cut_before_appending(tmp_path: Path) -> None:
    d = _open(tmp_path, {"seed": [0]})
    d.append({"kind": "row", "run": "a", "step": 0, "loss": 1.0})
    d.close()
    log = tmp_path / "results.jsonl"
    with open(log, "a") as f:
        f.write('{"kind": "row", "run": "a", "st')  # a kill in the middle of a write
    assert [r["step"] for r in replay(log)["a"].rows] == [0]
    d = _open(tmp_path, {"seed": [0]})
    d.append({"kind": "row", "run": "a", "step": 1, "loss": 2.0})
    d.close()
    lines = log.read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [0, 1]


def test_non_finite_values_are_never_logged(tmp_path: Path) -> None:
    d = _open(tmp_path, {"seed": [0]})
    with pytest.raises(ValueError, match="not JSON compliant"):
        d.append({"kind": "row", "run": "a", "step": 0, "loss": float("nan")})
    d.close()


def test_the_backend_key_is_made_once_and_kept(tmp_path: Path) -> None:
    d = _open(tmp_path, {"seed": [0]})
    key = d.backend_key()
    assert key.startswith("tml-")
    assert d.backend_key() == key
    d.close()
    assert _open(tmp_path, {"seed": [0]}).backend_key() == key
