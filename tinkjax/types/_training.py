"""Training requests and results: forward/backward, optimizer steps, loss-function types."""

from __future__ import annotations

from typing import Literal

import msgspec

from tinkjax.errors import WireFormatError

from ._base import StrictWire, Wire
from ._datum import Datum
from ._tensor import TensorData

__all__ = [
    "AdamOptimizerConfig",
    "AdamParams",
    "DimuonOptimizerConfig",
    "DimuonParams",
    "ForwardBackwardInput",
    "ForwardBackwardOutput",
    "ForwardBackwardRequest",
    "ForwardRequest",
    "LossFnOutput",
    "LossFnType",
    "OptimParams",
    "OptimStepRequest",
    "OptimStepResponse",
    "OptimizerConfig",
]

LossFnType = Literal[
    "cross_entropy",
    "importance_sampling",
    "ppo",
    "cispo",
    "dro",
    "gspo",
    "stable_reinforce",
    "custom",
]

LossFnOutput = dict[str, TensorData]


class AdamParams(StrictWire, frozen=True, kw_only=True):
    """AdamW hyper-parameters (decoupled weight decay); Tinker's defaults."""

    learning_rate: float = 1e-4
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-12
    weight_decay: float = 0.0
    grad_clip_norm: float = 0.0
    """Clip the global gradient norm to this value; 0 disables clipping."""


class DimuonParams(StrictWire, frozen=True, kw_only=True, tag="dimuon", tag_field="type"):
    """Hyper-parameters of the ``dimuon`` optimizer family."""

    learning_rate: float
    grad_clip_norm: float = 0.0
    beta1: float = 0.9


OptimParams = AdamParams | DimuonParams


class AdamOptimizerConfig(StrictWire, frozen=True, kw_only=True, tag="adamw", tag_field="type"):
    """Selects the AdamW family at model creation."""


class DimuonOptimizerConfig(StrictWire, frozen=True, kw_only=True, tag="dimuon", tag_field="type"):
    """Selects the dimuon family at model creation."""

    version: Literal[1] = 1


OptimizerConfig = AdamOptimizerConfig | DimuonOptimizerConfig


class ForwardBackwardInput(StrictWire, frozen=True, kw_only=True):
    """A batch and the loss to apply to it."""

    data: list[Datum]
    loss_fn: LossFnType
    loss_fn_config: dict[str, float | str] | None = None


class ForwardBackwardRequest(StrictWire, frozen=True, kw_only=True):
    """``/forward_backward``: protobuf in SDK ≥ 0.25, this JSON shape in the JSON era."""

    forward_backward_input: ForwardBackwardInput
    model_id: str
    seq_id: int | None = None


class ForwardRequest(StrictWire, frozen=True, kw_only=True):
    """JSON-era ``/forward`` (a forward-only pass; nothing accumulates)."""

    forward_input: ForwardBackwardInput
    model_id: str
    seq_id: int | None = None


class ForwardBackwardOutput(Wire, frozen=True, kw_only=True):
    """Per-datum outputs (``logprobs``, ``elementwise_loss``) and metrics (``name:reduction``)."""

    loss_fn_output_type: str
    loss_fn_outputs: list[LossFnOutput]
    metrics: dict[str, float] = msgspec.field(default_factory=dict)


class OptimStepRequest(StrictWire, frozen=True, kw_only=True):
    """``/optim_step``. On the wire ``adam_params`` or ``optimizer_params`` carries the params."""

    model_id: str
    seq_id: int | None = None
    adam_params: AdamParams | None = None
    optimizer_params: DimuonParams | None = None
    type: Literal["optim_step"] = "optim_step"

    def __post_init__(self) -> None:
        # The SDK's model holds one ``optim_params`` and writes it under one of the two keys.
        if self.adam_params is not None and self.optimizer_params is not None:
            raise WireFormatError(
                "set adam_params or optimizer_params, not both", field="optimizer_params"
            )
        if self.adam_params is None and self.optimizer_params is None:
            msgspec.structs.force_setattr(self, "adam_params", AdamParams())

    @property
    def optim_params(self) -> OptimParams:
        """The hyper-parameters, whichever family."""
        if self.optimizer_params is not None:
            return self.optimizer_params
        return self.adam_params if self.adam_params is not None else AdamParams()


class OptimStepResponse(Wire, frozen=True, kw_only=True):
    """Result of an optimizer step (free-form metrics)."""

    metrics: dict[str, float] | None = None
