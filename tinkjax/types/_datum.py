"""``Datum``: one training example, a model input plus named loss-function inputs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec
import numpy as np

from tinkjax.errors import LossInputKeyError, TensorError

from ._base import StrictWire
from ._model_input import ModelInput
from ._tensor import TensorData

__all__ = [
    "LOSS_INPUT_DTYPES",
    "Datum",
    "PromptProvenanceSpan",
    "ProvenanceSpan",
    "SampledProvenanceSpan",
    "coerce_loss_input",
]

#: Wire dtype of each known loss-function input, used to cast plain Python lists
#: (the official SDK's rule; any other key given as a list is an error).
LOSS_INPUT_DTYPES: Mapping[str, str] = {
    "target_tokens": "int64",
    "weights": "float32",
    "advantages": "float32",
    "logprobs": "float32",
    "clip_low_threshold": "float32",
    "clip_high_threshold": "float32",
    "sequence_ratio_mask": "float32",
}


class PromptProvenanceSpan(StrictWire, frozen=True, kw_only=True, tag="prompt_tokens"):
    """A run of positions that came from a sampler's prompt (``offset``: where the run starts
    in that sequence's prompt, 0 by default as in the official SDK)."""

    sequence_id: str
    offset: int = 0
    length: int


class SampledProvenanceSpan(StrictWire, frozen=True, kw_only=True, tag="sampled_tokens"):
    """A run of positions that a sampler generated (``offset``: where the run starts in that
    sequence's sampled tokens, 0 by default as in the official SDK)."""

    sequence_id: str
    offset: int = 0
    length: int


ProvenanceSpan = PromptProvenanceSpan | SampledProvenanceSpan


def coerce_loss_input(key: str, value: Any) -> TensorData:
    """Turn a raw loss-function input into ``TensorData`` following the official rules.

    ``TensorData`` passes through; NumPy/JAX arrays keep their kind (float → float32,
    integer → int64); plain lists are cast by key (``target_tokens`` → int64, the known float
    keys → float32) and an unknown key raises :class:`LossInputKeyError`.
    """
    if isinstance(value, TensorData):
        return value
    if isinstance(value, np.ndarray) or hasattr(value, "__array__"):
        arr = np.asarray(value)
        if arr.dtype.kind not in "fiub" and str(arr.dtype) != "bfloat16":
            raise TensorError(f"unsupported dtype {arr.dtype}", field=f"loss_fn_inputs.{key}")
        return TensorData.from_jax(arr)
    if isinstance(value, list | tuple):
        if key not in LOSS_INPUT_DTYPES:
            raise LossInputKeyError(
                f"loss_fn_inputs key {key!r} is not a known input; known keys are "
                f"{sorted(LOSS_INPUT_DTYPES)} (pass a NumPy array or TensorData for other keys)",
                field=f"loss_fn_inputs.{key}",
            )
        try:
            arr = np.asarray(value)
        except ValueError:
            raise TensorError(
                "must be a rectangular numeric array; ragged nested lists are not supported",
                field=f"loss_fn_inputs.{key}",
            ) from None
        if arr.size and arr.dtype.kind not in "fiub":
            raise TensorError(f"non-numeric values ({arr.dtype})", field=f"loss_fn_inputs.{key}")
        dtype = LOSS_INPUT_DTYPES[key]
        try:
            return TensorData(data=arr, dtype=dtype, shape=list(arr.shape))  # type: ignore[arg-type]
        except TensorError as exc:
            raise TensorError(str(exc), field=f"loss_fn_inputs.{key}") from None
    raise TensorError(
        f"unsupported value of type {type(value).__name__}", field=f"loss_fn_inputs.{key}"
    )


class Datum(StrictWire, frozen=True, kw_only=True):
    """One example: ``model_input`` and the loss-function inputs aligned with it.

    Position ``i`` of ``model_input`` predicts ``loss_fn_inputs["target_tokens"][i]``.
    Raw lists and arrays given as ``loss_fn_inputs`` values are converted on construction.
    """

    model_input: ModelInput
    loss_fn_inputs: dict[str, TensorData] = msgspec.field(default_factory=dict)
    model_input_spans: list[ProvenanceSpan] | None = None
    loss_fn_input_spans: list[ProvenanceSpan] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.loss_fn_inputs, Mapping):
            raise TensorError(
                f"must be a mapping of name → tensor, got {type(self.loss_fn_inputs).__name__}",
                field="loss_fn_inputs",
            )
        if any(not isinstance(v, TensorData) for v in self.loss_fn_inputs.values()) or not (
            isinstance(self.loss_fn_inputs, dict)
        ):
            coerced = {str(k): coerce_loss_input(str(k), v) for k, v in self.loss_fn_inputs.items()}
            msgspec.structs.force_setattr(self, "loss_fn_inputs", coerced)
        if (self.model_input_spans is None) != (self.loss_fn_input_spans is None):
            raise ValueError(
                "provenance comes as a pair: set both model_input_spans and "
                "loss_fn_input_spans, or neither"
            )

    def with_provenance(
        self, model_input: list[ProvenanceSpan], loss_fn_inputs: list[ProvenanceSpan]
    ) -> Datum:
        """A copy carrying provenance spans that tile the input and the targets exactly."""
        _check_tiling("model_input", model_input, self.model_input.length)
        target = self.loss_fn_inputs.get("target_tokens")
        if target is not None and len(target.dense_shape) == 1:
            _check_tiling("loss_fn_inputs", loss_fn_inputs, target.dense_shape[0])
        return msgspec.structs.replace(
            self, model_input_spans=list(model_input), loss_fn_input_spans=list(loss_fn_inputs)
        )


def _check_tiling(name: str, spans: list[ProvenanceSpan], expected: int) -> None:
    total = sum(span.length for span in spans)
    if total != expected:
        raise ValueError(
            f"with_provenance {name} spans cover {total} positions but the field has "
            f"{expected}; the runs must tile it exactly"
        )
