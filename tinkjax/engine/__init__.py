"""The custom-loss engine: ``loss = base + Σ wᵢ·regᵢ`` and ∂loss/∂logprobs in one jitted program."""

from tinkjax.engine._batch import STANDARD_INPUTS, LossBatch, bucket_size
from tinkjax.engine._compute import (
    compute_custom_loss,
    compute_custom_loss_async,
    lower_custom_loss,
)
from tinkjax.engine._errors import (
    CustomLossError,
    EngineInputError,
    NonFiniteError,
    RegularizerError,
)
from tinkjax.engine._events import EmitFn
from tinkjax.engine._loss_spec import CustomLossSpec, LossSpec, NormMethod, SpecOptions, as_spec
from tinkjax.engine._pack import Bucketing, DatumLayout, PackedInputs, pack_inputs
from tinkjax.engine._pending import PendingCustomLoss, prepare_custom_loss_async
from tinkjax.engine._program import trace_count
from tinkjax.engine._reference import reference_grad_norms
from tinkjax.engine._result import CustomLossResult, RegularizerOutput
from tinkjax.engine._term_specs import DatumLoss, PackedLoss, Regularizer, validate_regularizers

__all__ = [
    "STANDARD_INPUTS",
    "Bucketing",
    "CustomLossError",
    "CustomLossResult",
    "CustomLossSpec",
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
    "PendingCustomLoss",
    "Regularizer",
    "RegularizerError",
    "RegularizerOutput",
    "SpecOptions",
    "as_spec",
    "bucket_size",
    "compute_custom_loss",
    "compute_custom_loss_async",
    "lower_custom_loss",
    "pack_inputs",
    "prepare_custom_loss_async",
    "reference_grad_norms",
    "trace_count",
    "validate_regularizers",
]
