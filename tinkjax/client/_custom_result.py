"""``CustomForwardBackwardOutput``: what ``forward_backward_custom`` returns.

Kept apart from :mod:`._custom` so that the public name is importable with :mod:`tinkjax.client`
without importing the engine (and JAX) before the first custom-loss call.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ._term_table import TermRow, TermTable

if TYPE_CHECKING:
    from tinkjax.engine import CustomLossResult, RegularizerOutput

__all__ = ["SURROGATE_METRIC", "CustomForwardBackwardOutput"]

#: Metric under which the server's own ``loss:sum`` of the backward pass is kept.
SURROGATE_METRIC = "surrogate_loss:sum"


@dataclasses.dataclass(frozen=True)
class CustomForwardBackwardOutput:
    """What ``forward_backward_custom`` returns: the backward pass's server output (same
    attributes as :class:`~tinkjax.types.ForwardBackwardOutput`) plus the engine's breakdown.

    Attributes:
        loss_fn_output_type: as returned by the server for the backward pass.
        loss_fn_outputs: per datum, the server's outputs of the backward pass (``logprobs``,
            ``elementwise_loss``).
        metrics: the server's metrics with ``loss:sum`` replaced by the custom loss (the
            server's value moves to ``surrogate_loss:sum``), plus the loss's own metrics.
        breakdown: the engine's :class:`~tinkjax.engine.CustomLossResult` (values,
            contributions, gradient norms, per-datum gradients).
        base_name: the base loss's name (``"cross_entropy"``; ``"base"`` when unnamed).
        reductions: per term (``"base"`` and each regularizer), how it reduces over tokens
            (``"sum over tokens"``, ``"mean over tokens"``, ...), for :meth:`summary`.
    """

    loss_fn_output_type: str
    loss_fn_outputs: list[Any]
    metrics: dict[str, float]
    breakdown: CustomLossResult
    base_name: str = "base"
    reductions: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def summary(self) -> TermTable:
        """The labelled per-term table: each term's reduction, weight, value, contribution and
        gradient norm w.r.t. the logprobs; ``print(out.summary())``, or display it in a
        notebook (an HTML table). ``breakdown.summary()`` is the flat ``{name: float}`` view."""
        b = self.breakdown
        rows = [
            TermRow(f"base ({self.base_name})", 1.0, b.base_loss, b.base_loss, b.base_grad_norm,
                    self.reductions.get("base", "?")),
            *(
                TermRow(r.name, r.weight, r.value, r.contribution, r.grad_norm,
                        self.reductions.get(r.name, "?"))
                for r in b.regularizers.values()
            ),
            TermRow("total", None, None, b.loss_total, b.total_grad_norm, ""),
        ]  # fmt: skip
        return TermTable(tuple(rows))

    def _repr_html_(self) -> str:
        return self.summary()._repr_html_()

    @property
    def loss_total(self) -> float:
        """``base_loss + regularizer_total``."""
        return self.breakdown.loss_total

    @property
    def base_loss(self) -> float:
        """The base loss's value (0 without one)."""
        return self.breakdown.base_loss

    @property
    def regularizer_total(self) -> float:
        """``Σ weightᵢ·valueᵢ``."""
        return self.breakdown.regularizer_total

    @property
    def regularizers(self) -> Mapping[str, RegularizerOutput]:
        """Per regularizer: ``value``, ``weight``, ``contribution``, ``grad_norm``, metrics."""
        return self.breakdown.regularizers

    @property
    def base_grad_norm(self) -> float | None:
        """Norm of ∂base/∂logprobs (``None`` unless ``track_grad_norms``)."""
        return self.breakdown.base_grad_norm

    @property
    def total_grad_norm(self) -> float:
        """Norm of ∂loss_total/∂logprobs over every real token."""
        return self.breakdown.total_grad_norm
