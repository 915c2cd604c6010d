"""The results table's other forms: rows from step outputs, long form, pandas, JSONL, plots."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tinkjax.sweep import Results, StepResult, plot_terms
from tinkjax.sweep._results import row_of

ROWS = [
    {"run": r, "step": s, "lr": lr, "loss": 1.0 / (s + 1), "base/value": 1.0, "base/contribution": 1.0,
     "base/grad_norm": 0.5, "ent/value": 0.1 * s, "ent/contribution": 0.01 * s, "ent/grad_norm": None}
    for r, lr in (("a", 1e-3), ("b", 1e-2))
    for s in range(3)
]  # fmt: skip


def _results() -> Results:
    return Results(
        ROWS,
        {"a": "completed", "b": "completed"},
        {},
        {"a": {"optimizer.learning_rate": 1e-3}, "b": {"optimizer.learning_rate": 1e-2}},
    )


def test_row_of_reads_metrics_dicts_and_step_results() -> None:
    assert row_of({"loss": 2.0, "acc": 0.5}) == {"loss": 2.0, "metric/acc": 0.5}
    assert row_of(StepResult(learning_rate=0.1, metrics={"r": 1.0})) == {
        "learning_rate": 0.1,
        "metric/r": 1.0,
    }
    assert row_of(None) == {}


def test_long_form_pandas_and_jsonl(tmp_path: Path) -> None:
    results = _results()
    long = results.terms()
    assert len(long) == 6 * 2
    assert {(r["run"], r["term"]) for r in long} == {(r, t) for r in "ab" for t in ("base", "ent")}
    pd = pytest.importorskip("pandas")
    df = results.to_pandas()
    assert isinstance(df, pd.DataFrame)
    assert df.shape[0] == 6
    assert df.groupby("run")["loss"].min().to_dict() == {
        "a": pytest.approx(1 / 3),
        "b": pytest.approx(1 / 3),
    }
    path = results.to_jsonl(tmp_path / "t.jsonl")
    assert [json.loads(line) for line in path.read_text().splitlines()] == ROWS


def test_plot_terms_draws_one_line_per_run_and_axes_per_term_and_column() -> None:
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    fig = plot_terms(_results(), ("value", "grad_norm"))
    axes = fig.get_axes()
    assert len(axes) == 4  # (base, ent) x (value, grad_norm)
    titles = [ax.get_title() for ax in axes]
    assert titles == ["base value", "base grad_norm", "ent value", "ent grad_norm"]
    assert len(axes[0].get_lines()) == 2  # one per run
    assert len(axes[3].get_lines()) == 0  # no grad norms recorded for ent
    labels = [t.get_text() for t in axes[0].get_legend().get_texts()]
    assert labels == ["learning_rate=0.001", "learning_rate=0.01"]
