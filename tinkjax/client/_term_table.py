"""``TermTable``: the labelled per-term summary of a custom-loss step (``out.summary()``).

Terms reduce over tokens differently (Tinker's losses *sum* over tokens, most built-in
regularizers take a *mean*), so a raw value of thousands may sit beside one of 0.01: the table
says how each term is reduced, and that every gradient norm is taken with respect to the
per-token logprobs (unweighted, over real tokens), which is what makes the norms comparable.
Printed as text; rendered as an HTML table in notebooks (``_repr_html_``).
"""

from __future__ import annotations

import dataclasses
import html
from collections.abc import Mapping
from typing import Any

__all__ = ["TermRow", "TermTable", "describe_reduction"]

_REDUCTIONS = {
    "sum": "sum over tokens",
    "mean": "mean over tokens",
    "seq_mean": "mean over sequences",
}

#: Tinker's built-in losses sum their per-token losses over tokens.
BUILTIN_LOSS_REDUCTION = "sum over tokens"

GRAD_NORM_LABEL = "grad norm w.r.t. logprobs"


#: Built-in terms without a ``reduction`` option, by their function's name.
_OWN = {"sequence_variance_value": "variance over sequences"}


def describe_reduction(fn: object, static: Mapping[str, object]) -> str:
    """How a regularizer (function ``fn``, static options ``static``) reduces over tokens:
    its ``reduction`` option, what a built-in without one computes, else ``"its own"``."""
    reduction = static.get("reduction")
    if reduction is not None:
        return _REDUCTIONS.get(str(reduction), str(reduction))
    return _OWN.get(getattr(fn, "__name__", ""), "its own")


@dataclasses.dataclass(frozen=True)
class TermRow:
    """One term: ``contribution = weight · value``; ``grad_norm`` is ‖∂value/∂logprobs‖₂."""

    term: str
    weight: float | None
    value: float | None
    contribution: float
    grad_norm: float | None
    reduced: str


@dataclasses.dataclass(frozen=True)
class TermTable:
    """Every term of a step (the base, each regularizer, the total) with its labels."""

    rows: tuple[TermRow, ...]

    def as_dict(self) -> dict[str, dict[str, float | str | None]]:
        """``{term: {"weight", "value", "contribution", "grad_norm", "reduced"}}``."""
        return {
            r.term: {
                "weight": r.weight,
                "value": r.value,
                "contribution": r.contribution,
                "grad_norm": r.grad_norm,
                "reduced": r.reduced,
            }
            for r in self.rows
        }

    def _cells(self) -> list[tuple[str, ...]]:
        def num(x: float | None, fmt: str) -> str:
            return "" if x is None else format(x, fmt)

        header = ("term", "reduced", "weight", "value", "contribution", GRAD_NORM_LABEL)
        body = [
            (r.term, r.reduced, num(r.weight, "g"), num(r.value, ".4f"),
             format(r.contribution, "+.4f"), "-" if r.grad_norm is None else f"{r.grad_norm:.4f}")
            for r in self.rows
        ]  # fmt: skip
        return [header, *body]

    def __str__(self) -> str:
        cells = self._cells()
        widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
        lines = [
            "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))).rstrip()
            for row in cells
        ]  # fmt: skip
        rule = "-" * max(len(line) for line in lines)
        return "\n".join([lines[0], rule, *lines[1:-1], rule, lines[-1]])

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(str(self))  # IPython's plain-text display: the table, not the dataclass

    def _repr_html_(self) -> str:
        cells = self._cells()
        head = "".join(f"<th>{html.escape(c)}</th>" for c in cells[0])
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
            for row in cells[1:]
        )
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
