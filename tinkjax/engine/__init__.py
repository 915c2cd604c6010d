"""The custom-loss engine: ``loss = base + Σ wᵢ·regᵢ`` and ∂loss/∂logprobs in one jitted program."""

from tinkjax.engine._api import compute_custom_loss, compute_custom_loss_async, lower_custom_loss
from tinkjax.engine._batch import STANDARD_INPUTS, LossBatch, bucket_size
from tinkjax.engine._engine import EmitFn, LossSpec, NormMethod
from tinkjax.engine._errors import (
    CustomLossError,
    EngineInputError,
    NonFiniteError,
    RegularizerError,
)
from tinkjax.engine._kernel import trace_count
from tinkjax.engine._pack import Bucketing, DatumLayout, PackedInputs, pack_inputs
from tinkjax.engine._reference import reference_grad_norms
from tinkjax.engine._result import CustomLossResult, RegularizerOutput
from tinkjax.engine._spec import DatumLoss, PackedLoss, Regularizer

__all__ = [
    "STANDARD_INPUTS",
    "Bucketing",
    "CustomLossError",
    "CustomLossResult",
    "DatumLayout",
    "DatumLoss",
    "EmitFn",
    "EngineInputError",
    "LossBatch",
    "LossSpec",
    "NonFiniteError",
    "NormMethod",
    "PackedInputs",
    "PackedLoss",
    "Regularizer",
    "RegularizerError",
    "RegularizerOutput",
    "bucket_size",
    "compute_custom_loss",
    "compute_custom_loss_async",
    "lower_custom_loss",
    "pack_inputs",
    "reference_grad_norms",
    "trace_count",
]
