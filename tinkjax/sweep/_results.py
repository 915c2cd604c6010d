"""The results table: one row per run and step, with every term's numbers.

Columns: ``run``, ``step``, the run's varied config leaves by dotted path
(``optimizer.learning_rate``), ``loss``, per term ``<term>/value``, ``<term>/contribution`` and
``<term>/grad_norm`` (the base loss is the term ``base``; grad norms are taken with respect to
the per-token logprobs, over real tokens), ``total_grad_norm``, ``learning_rate``,
``step_seconds`` (wall time of the step) and ``wall_seconds`` (since the run started, summed
over resumes), then the step's own metrics as ``metric/<name>``.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from tinkjax.sweep._directory import LOG, replay

__all__ = ["Results", "RunFailure", "StepResult", "load", "row_of"]


@dataclasses.dataclass(frozen=True)
class StepResult:
    """What a step function may return (the ready loops do): the step's training output, the
    learning rate it was applied with, and extra metrics for the table.

    A step function may also return a ``CustomForwardBackwardOutput``, a
    ``ForwardBackwardOutput``, a ``{name: float}`` mapping of metrics (``"loss"`` becomes the
    loss column) or ``None``.
    """

    output: Any = None
    learning_rate: float | None = None
    metrics: Mapping[str, float] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class RunFailure:
    """A run that failed for good: its error (type and message) and how many attempts it had."""

    run_id: str
    error: str
    attempts: int


def _terms(output: Any) -> dict[str, float | None]:
    breakdown = getattr(output, "breakdown", None)
    if breakdown is None:
        return {}
    cols: dict[str, float | None] = {
        "loss": float(breakdown.loss_total),
        "base/value": float(breakdown.base_loss),
        "base/contribution": float(breakdown.base_loss),
        "base/grad_norm": breakdown.base_grad_norm,
    }
    for name, reg in breakdown.regularizers.items():
        cols[f"{name}/value"] = float(reg.value)
        cols[f"{name}/weight"] = float(reg.weight)
        cols[f"{name}/contribution"] = float(reg.contribution)
        cols[f"{name}/grad_norm"] = reg.grad_norm
    cols["total_grad_norm"] = float(breakdown.total_grad_norm)
    return cols


def row_of(result: Any) -> dict[str, Any]:
    """The table columns of one step function's return value (see :class:`StepResult`)."""
    if not isinstance(result, StepResult):
        if isinstance(result, Mapping):
            result = StepResult(metrics=result)
        else:
            result = StepResult(output=result)
    cols: dict[str, Any] = _terms(result.output)
    metrics = getattr(result.output, "metrics", None)
    if "loss" not in cols and isinstance(metrics, Mapping) and "loss:sum" in metrics:
        cols["loss"] = float(metrics["loss:sum"])
    if result.learning_rate is not None:
        cols["learning_rate"] = float(result.learning_rate)
    for key, value in result.metrics.items():
        if key == "loss":
            cols["loss"] = float(value)
        else:
            cols[f"metric/{key}"] = float(value)
    return cols


class Results:
    """A sweep's results: the table's rows, the runs' statuses and their failures.

    Attributes:
        rows: one dict per run and step, in run then step order (see the module doc).
        status: per run id, ``"completed"``, ``"stopped"``, ``"failed"`` or ``"unfinished"``.
        failures: per failed run id, its :class:`RunFailure`.
        overrides: per run id, its varied config leaves.
        directory: the sweep directory, when there is one.
    """

    def __init__(
        self,
        rows: Sequence[Mapping[str, Any]],
        status: Mapping[str, str],
        failures: Mapping[str, RunFailure],
        overrides: Mapping[str, Mapping[str, Any]],
        directory: Path | None = None,
    ) -> None:
        self.rows = [dict(r) for r in rows]
        self.overrides = {k: dict(v) for k, v in overrides.items()}
        self.status = dict(status)
        self.failures = dict(failures)
        self.directory = directory

    def __repr__(self) -> str:
        counts: dict[str, int] = {}
        for s in self.status.values():
            counts[s] = counts.get(s, 0) + 1
        return f"Results({len(self.status)} runs {counts}, {len(self.rows)} rows)"

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def run(self, run_id: str) -> list[dict[str, Any]]:
        """The rows of one run, in step order."""
        return [r for r in self.rows if r["run"] == run_id]

    def terms(self) -> list[dict[str, Any]]:
        """The long form: one row per run, step and term (``term``, ``value``,
        ``contribution``, ``grad_norm``), the shape plotting libraries want."""
        out = []
        for row in self.rows:
            names = sorted({k.split("/")[0] for k in row if k.endswith("/value")})
            for name in names:
                out.append(
                    {
                        "run": row["run"],
                        "step": row["step"],
                        "term": name,
                        "value": row.get(f"{name}/value"),
                        "contribution": row.get(f"{name}/contribution"),
                        "grad_norm": row.get(f"{name}/grad_norm"),
                    }
                )
        return out

    def to_pandas(self) -> Any:
        """The table as a ``pandas.DataFrame`` (needs pandas)."""
        try:
            pd: Any = importlib.import_module("pandas")  # optional; no stubs needed
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError("Results.to_pandas() needs pandas: pip install pandas") from exc
        return pd.DataFrame(self.rows)

    def to_jsonl(self, path: str | Path) -> Path:
        """Write the table as JSON Lines (one row per line); returns the path."""
        path = Path(path)
        with open(path, "w", encoding="utf-8") as f:
            for row in self.rows:
                f.write(json.dumps(row, allow_nan=False) + "\n")
        return path


def load(directory: str | Path) -> Results:
    """The results recorded in a sweep directory so far (a running or killed sweep too).

    The table's config columns come from the directory's ``sweep.json``.
    """
    directory = Path(directory)
    manifest = json.loads((directory / "sweep.json").read_text("utf-8"))
    records = replay(directory / LOG)
    return collect([(r["run_id"], r["overrides"]) for r in manifest["runs"]], records, directory)


def collect(
    runs: Sequence[tuple[str, Mapping[str, Any]]],
    records: Mapping[str, Any],
    directory: Path | None,
) -> Results:
    """:class:`Results` from replayed run records, runs in sweep order."""
    rows: list[dict[str, Any]] = []
    status: dict[str, str] = {}
    failures: dict[str, RunFailure] = {}
    for run_id, overrides in runs:
        rec = records.get(run_id)
        if rec is None:
            status[run_id] = "unfinished"
            continue
        for row in sorted(rec.rows, key=lambda r: r["step"]):
            body = {k: v for k, v in row.items() if k not in ("kind", "run", "step")}
            rows.append({"run": run_id, "step": row["step"], **overrides, **body})
        status[run_id] = rec.status or "unfinished"
        if rec.status == "failed":
            failures[run_id] = RunFailure(run_id, rec.error or "", rec.attempts)
    return Results(rows, status, failures, dict(runs), directory)
