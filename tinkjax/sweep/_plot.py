"""Per-term curves across the runs of a sweep (matplotlib: the ``plot`` extra)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tinkjax.sweep._results import Results

__all__ = ["plot_terms"]


def plot_terms(
    results: Results,
    columns: Sequence[str] = ("value",),
    *,
    terms: Sequence[str] | None = None,
    runs: Sequence[str] | None = None,
    label: str | None = None,
    logy: bool = False,
) -> Any:
    """One axes per term (rows) and per column (``value``, ``contribution``, ``grad_norm``),
    one line per run, against the step; returns the matplotlib ``Figure``.

    Args:
        results: a sweep's :class:`~tinkjax.sweep.Results`.
        columns: which numbers of each term to plot.
        terms: which terms (default: every term in the table, ``base`` first).
        runs: which runs (default: all).
        label: a config leaf to label the lines with (default: the varied leaves).
        logy: logarithmic y axes.
    """
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("plot_terms needs matplotlib: pip install 'tinkjax[plot]'") from exc
    long = results.terms()
    names = (
        list(terms)
        if terms is not None
        else sorted({r["term"] for r in long}, key=lambda n: (n != "base", n))
    )
    run_ids = list(runs) if runs is not None else list(results.status)
    fig, axes = plt.subplots(
        len(names), len(columns), figsize=(4.5 * len(columns), 2.8 * max(len(names), 1)),
        squeeze=False, sharex=True,
    )  # fmt: skip
    for i, name in enumerate(names):
        for j, column in enumerate(columns):
            ax = axes[i][j]
            for run_id in run_ids:
                points = [
                    (r["step"], r[column])
                    for r in long
                    if r["run"] == run_id and r["term"] == name and r[column] is not None
                ]
                if not points:
                    continue
                steps, values = zip(*points, strict=True)
                ax.plot(
                    steps, values, label=_label(results.overrides.get(run_id, {}), run_id, label)
                )
            ax.set_title(f"{name} {column}")
            if logy:
                ax.set_yscale("log")
            if i == len(names) - 1:
                ax.set_xlabel("step")
    if names:
        axes[0][0].legend(fontsize="small")
    fig.tight_layout()
    return fig


def _label(overrides: dict[str, Any], run_id: str, leaf: str | None) -> str:
    if leaf is not None and leaf in overrides:
        return f"{leaf}={overrides[leaf]}"
    return ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in overrides.items()) or run_id
