"""Type aliases the official SDK exports from ``tinker.types`` (names for annotations)."""

from __future__ import annotations

from typing import Literal, TypeAlias

from ._datum import ProvenanceSpan
from ._tensor import TensorData

__all__ = ["LossFnInputs", "ModelID", "ProvenanceSpans", "RequestID", "SamplingClientKind"]

#: ``Datum.loss_fn_inputs``: input name → tensor.
LossFnInputs: TypeAlias = dict[str, TensorData]
#: A training run's id (``{session_id}:train:{n}``).
ModelID: TypeAlias = str
#: The id of a request's future.
RequestID: TypeAlias = str
#: ``Datum.model_input_spans`` / ``loss_fn_input_spans``.
ProvenanceSpans: TypeAlias = list[ProvenanceSpan]
#: ``save_weights_and_get_sampling_client(kind=...)``.
SamplingClientKind: TypeAlias = Literal["snapshot", "inflight"]
