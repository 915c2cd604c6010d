"""The sweep directory: what was asked (``sweep.json``), what happened (``results.jsonl``).

``results.jsonl`` is an append-only log, one JSON object per line, written and ``fsync``\\ ed one
record at a time, so a ``kill -9`` loses at most the line being written (a torn last line is
ignored and cut off on the next open). Records, by ``kind``:

- ``row``: one step of one run (the results table's row);
- ``checkpoint``: the run's state saved after ``step`` at ``path`` (written once the save is
  acknowledged, so a listed checkpoint exists);
- ``resume``: the run restarted from its checkpoint at ``step``; its rows past that step, logged
  before, are superseded by the ones logged after;
- ``finished``: the run is done (``status`` ``completed`` or ``stopped`` by the early-stopping
  hook); ``failed``: an attempt raised (``error_type``, ``error``, ``attempt``, ``final``).

Replaying the log gives every run's state (:class:`RunRecord`): what a second invocation of the
same sweep needs to skip finished runs and resume the others.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tinkjax.sweep._config import RunSpec
from tinkjax.sweep._errors import SweepDirectoryError

__all__ = ["MemoryLog", "RunRecord", "SweepDirectory", "replay", "replay_records"]

MANIFEST = "sweep.json"
LOG = "results.jsonl"
_FORMAT = 1


@dataclasses.dataclass
class RunRecord:
    """A run's state, as replayed from the log."""

    rows: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    checkpoint: tuple[int, str] | None = None
    """``(step, tinker path)`` of the last acknowledged checkpoint."""
    status: str | None = None
    """``"completed"``, ``"stopped"``, ``"failed"`` (final), or ``None`` while unfinished."""
    error: str | None = None
    attempts: int = 0

    @property
    def done(self) -> bool:
        """Finished or failed for good: a second invocation leaves it alone."""
        return self.status is not None


class SweepDirectory:
    """One sweep's folder. Opening it checks that it holds this sweep (or nothing yet).

    Raises:
        SweepDirectoryError: ``sweep.json`` describes another sweep or cannot be read.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        fingerprint: str,
        specs: Sequence[RunSpec],
        settings: Mapping[str, Any],
    ) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        manifest = self.path / MANIFEST
        if manifest.exists():
            try:
                found = json.loads(manifest.read_text("utf-8"))
                other = found["fingerprint"]
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise SweepDirectoryError(
                    f"{manifest}: not a tinkjax sweep manifest ({exc})"
                ) from None
            if other != fingerprint:
                raise SweepDirectoryError(
                    f"{manifest} holds a different sweep (its runs or settings differ from "
                    "these): use another directory, or delete this one to start over"
                )
        else:
            body = {
                "format": _FORMAT,
                "fingerprint": fingerprint,
                "settings": dict(settings),
                "runs": [
                    {"run_id": s.run_id, "overrides": s.overrides, "config": s.config}
                    for s in specs
                ],
            }
            _write_atomic(manifest, json.dumps(body, indent=2, default=str) + "\n")
        self._log_path = self.path / LOG
        self._repair_tail()
        self._log = open(self._log_path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())

    # ------------------------------------------------------------------ log
    def _repair_tail(self) -> None:
        """Cut a torn last line (a kill in the middle of a write) off the log."""
        if not self._log_path.exists():
            return
        data = self._log_path.read_bytes()
        if data and not data.endswith(b"\n"):
            with open(self._log_path, "r+b") as f:
                f.truncate(data.rfind(b"\n") + 1)
                f.flush()
                os.fsync(f.fileno())

    def append(self, record: Mapping[str, Any]) -> None:
        """Write one record durably (flushed and fsynced before returning)."""
        self._log.write(json.dumps(record, allow_nan=False, separators=(",", ":")) + "\n")
        self._log.flush()
        os.fsync(self._log.fileno())

    def close(self) -> None:
        """Close the log."""
        self._log.close()

    def replay(self) -> dict[str, RunRecord]:
        """Every run's state from the log (runs never logged are absent)."""
        return replay(self._log_path)

    # ------------------------------------------------------------------ local backend
    def backend_dir(self) -> Path:
        """Where the sweep's own local backend keeps its checkpoints (survives restarts)."""
        return self.path / "backend"

    def backend_key(self) -> str:
        """The API key of the sweep's local backend, made once and kept, so a resumed sweep
        is the same tenant as the interrupted one and sees its checkpoints."""
        path = self.backend_dir() / "api_key"
        if path.exists():
            return path.read_text("utf-8").strip()
        path.parent.mkdir(parents=True, exist_ok=True)
        key = f"tml-sweep-{secrets.token_hex(16)}"
        _write_atomic(path, key + "\n")
        return key


def replay(log: Path) -> dict[str, RunRecord]:
    """Every run's state from a ``results.jsonl`` log (a torn last line is ignored)."""
    if not log.exists():
        return {}
    records = []
    for line in log.read_text("utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue  # a torn last line
    return replay_records(records)


def replay_records(records: Iterable[Mapping[str, Any]]) -> dict[str, RunRecord]:
    """Every run's state from its log records, in the order they were written."""
    runs: dict[str, RunRecord] = {}
    for record in records:
        rec = runs.setdefault(record["run"], RunRecord())
        kind = record["kind"]
        if kind == "row":
            rec.rows.append(dict(record))
        elif kind == "checkpoint":
            rec.checkpoint = (int(record["step"]), str(record["path"]))
        elif kind == "resume":
            rec.rows = [r for r in rec.rows if r["step"] <= record["step"]]
            if record["step"] < 0:
                rec.checkpoint = None
        elif kind == "finished":
            rec.status = str(record["status"])
        elif kind == "failed":
            rec.attempts = max(rec.attempts, int(record["attempt"]))
            rec.error = f"{record['error_type']}: {record['error']}"
            if record.get("final"):
                rec.status = "failed"
    return runs


class MemoryLog:
    """The log of a sweep run without a directory: the same records, kept in memory."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def append(self, record: Mapping[str, Any]) -> None:
        """Keep one record."""
        self.records.append(dict(record))

    def replay(self) -> dict[str, RunRecord]:
        """Every run's state so far."""
        return replay_records(self.records)

    def close(self) -> None:
        """Nothing to close."""


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
