"""Results of a custom-loss step (plain host values: floats and NumPy arrays)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt


@dataclasses.dataclass(frozen=True)
class RegularizerOutput:
    """One regularizer's share of the step.

    Attributes:
        name: the regularizer's name.
        value: its raw value (before weighting).
        weight: the weight it was run with.
        contribution: ``weight * value``, its share of ``loss_total``.
        grad_norm: L2 norm of ∂value/∂logprobs over real tokens (unweighted), or ``None``
            when norms were not tracked.
        metrics: its own metrics.
    """

    name: str
    value: float
    weight: float
    contribution: float
    grad_norm: float | None
    metrics: Mapping[str, float]


@dataclasses.dataclass(frozen=True)
class CustomLossResult:
    """Everything a custom-loss step computed.

    Attributes:
        loss_total: ``base_loss + regularizer_total``.
        base_loss: the base loss value (0 without a base loss).
        base_grad_norm: norm of ∂base/∂logprobs, ``None`` when not tracked.
        regularizer_total: Σ contributions.
        regularizers: per regularizer, in the order given.
        total_grad_norm: norm of ∂loss_total/∂logprobs over every real token (always computed).
        metrics: the base loss's metrics, then each regularizer's as ``"<name>/<key>"``.
        gradients: per datum, ∂loss_total/∂logprobs, shaped like the datum's logprobs (``[n]``
            or ``[n, K]``) in the engine's float dtype (float32 by default). Send
            ``-gradients[i]`` as the ``weights`` of the linearised cross-entropy pass.
    """

    loss_total: float
    base_loss: float
    base_grad_norm: float | None
    regularizer_total: float
    regularizers: Mapping[str, RegularizerOutput]
    total_grad_norm: float
    metrics: Mapping[str, float]
    gradients: list[npt.NDArray[Any]]

    def summary(self) -> dict[str, float]:
        """A flat ``{name: float}`` view for logging (no gradients)."""
        out = {
            "loss_total": self.loss_total,
            "base_loss": self.base_loss,
            "regularizer_total": self.regularizer_total,
            "total_grad_norm": self.total_grad_norm,
        }
        if self.base_grad_norm is not None:
            out["base_grad_norm"] = self.base_grad_norm
        for name, reg in self.regularizers.items():
            out[f"{name}/value"] = reg.value
            out[f"{name}/contribution"] = reg.contribution
            if reg.grad_norm is not None:
                out[f"{name}/grad_norm"] = reg.grad_norm
        out.update(self.metrics)
        return out


def as_floats(tree: Mapping[str, Any]) -> dict[str, float]:
    """``{key: float(value)}`` of a mapping of NumPy scalars."""
    return {k: float(np.asarray(v)) for k, v in tree.items()}
