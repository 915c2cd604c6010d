"""Byte-level decoder models with multi-LoRA: the numerical core of the local backend."""

from tinkjax.models._batching import validate_datum
from tinkjax.models._config import DEFAULT_MODEL, PRESETS, ModelConfig, get_model_config
from tinkjax.models._custom import custom_metrics, validate_custom_datum
from tinkjax.models._hf import HFTokenizer, load_hf_config, load_hf_params
from tinkjax.models._runtime import ModelRuntime, trace_counts
from tinkjax.models._sharding import make_mesh, parse_mesh
from tinkjax.models._tokenizer import EOS_TOKEN_ID, ByteTokenizer
from tinkjax.models._types import (
    ADAM_KEYS,
    LORA_ALPHA,
    MAX_LEARNING_RATE,
    MIN_EPS,
    AdamHyper,
    AdapterInfo,
    AdapterSnapshot,
    DatumArrays,
    FwdBwdItem,
    FwdBwdResult,
    NonFiniteResultError,
    SampledArrays,
    SampleJob,
    SampleOutput,
    UnknownAdapterError,
    ValidDatum,
)

__all__ = [
    "ADAM_KEYS",
    "DEFAULT_MODEL",
    "EOS_TOKEN_ID",
    "LORA_ALPHA",
    "MAX_LEARNING_RATE",
    "MIN_EPS",
    "PRESETS",
    "AdamHyper",
    "AdapterInfo",
    "AdapterSnapshot",
    "ByteTokenizer",
    "DatumArrays",
    "FwdBwdItem",
    "FwdBwdResult",
    "HFTokenizer",
    "ModelConfig",
    "ModelRuntime",
    "NonFiniteResultError",
    "SampleJob",
    "SampleOutput",
    "SampledArrays",
    "UnknownAdapterError",
    "ValidDatum",
    "custom_metrics",
    "get_model_config",
    "load_hf_config",
    "load_hf_params",
    "make_mesh",
    "parse_mesh",
    "trace_counts",
    "validate_custom_datum",
    "validate_datum",
]
