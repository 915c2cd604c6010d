"""Byte-level decoder models with multi-LoRA: the numerical core of the local backend."""

from tinkjax.models._config import DEFAULT_MODEL, PRESETS, ModelConfig, get_model_config
from tinkjax.models._runtime import ModelRuntime, trace_counts
from tinkjax.models._tokenizer import ByteTokenizer
from tinkjax.models._types import (
    LORA_ALPHA,
    AdamHyper,
    AdapterInfo,
    AdapterSnapshot,
    DatumArrays,
    FwdBwdItem,
    FwdBwdResult,
    SampledArrays,
    SampleJob,
    SampleOutput,
    UnknownAdapterError,
)

__all__ = [
    "DEFAULT_MODEL",
    "LORA_ALPHA",
    "PRESETS",
    "AdamHyper",
    "AdapterInfo",
    "AdapterSnapshot",
    "ByteTokenizer",
    "DatumArrays",
    "FwdBwdItem",
    "FwdBwdResult",
    "ModelConfig",
    "ModelRuntime",
    "SampleJob",
    "SampleOutput",
    "SampledArrays",
    "UnknownAdapterError",
    "get_model_config",
    "trace_counts",
]
