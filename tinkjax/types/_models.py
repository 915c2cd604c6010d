"""Model lifecycle requests: create, info, load/save weights, weights info."""

from __future__ import annotations

from typing import Any, Literal

from ._base import StrictWire, Wire
from ._training import AdamOptimizerConfig, OptimizerConfig

__all__ = [
    "CopyWeightsRequest",
    "CopyWeightsResponse",
    "CreateModelRequest",
    "CreateModelResponse",
    "GetInfoRequest",
    "GetInfoResponse",
    "LoadWeightsRequest",
    "LoadWeightsResponse",
    "LoraConfig",
    "ModelData",
    "SaveWeightsExternalRequest",
    "SaveWeightsExternalResponse",
    "SaveWeightsExternalResponseInternal",
    "SaveWeightsForSamplerRequest",
    "SaveWeightsForSamplerResponse",
    "SaveWeightsForSamplerResponseInternal",
    "SaveWeightsRequest",
    "SaveWeightsResponse",
    "UnloadModelRequest",
    "UnloadModelResponse",
    "WeightsInfoRequest",
    "WeightsInfoResponse",
]


class LoraConfig(StrictWire, frozen=True, kw_only=True):
    """LoRA adapter settings (alpha is fixed at 32 by the service)."""

    rank: int
    seed: int | None = None
    train_unembed: bool = True
    train_mlp: bool = True
    train_attn: bool = True


class CreateModelRequest(StrictWire, frozen=True, kw_only=True):
    session_id: str
    model_seq_id: int
    base_model: str
    user_metadata: dict[str, Any] | None = None
    lora_config: LoraConfig | None = None
    optimizer_config: OptimizerConfig = AdamOptimizerConfig()
    type: Literal["create_model"] = "create_model"


class CreateModelResponse(Wire, frozen=True, kw_only=True):
    model_id: str
    type: Literal["create_model"] = "create_model"


class GetInfoRequest(StrictWire, frozen=True, kw_only=True):
    model_id: str
    type: Literal["get_info"] = "get_info"


class ModelData(Wire, frozen=True, kw_only=True):
    arch: str | None = None
    model_name: str | None = None
    tokenizer_id: str | None = None


class GetInfoResponse(Wire, frozen=True, kw_only=True):
    model_id: str
    model_data: ModelData
    optimizer_config: OptimizerConfig = AdamOptimizerConfig()
    is_lora: bool | None = None
    lora_rank: int | None = None
    model_name: str | None = None
    type: Literal["get_info"] | None = None


class LoadWeightsRequest(StrictWire, frozen=True, kw_only=True):
    """Create-via-load (``session_id`` + ``model_seq_id``) or legacy load (``model_id``)."""

    path: str
    optimizer: bool
    model_id: str | None = None
    seq_id: int | None = None
    session_id: str | None = None
    model_seq_id: int | None = None
    base_model: str | None = None
    user_metadata: dict[str, Any] | None = None
    optimizer_config: OptimizerConfig | None = None
    weights_access_token: str | None = None
    type: Literal["load_weights"] = "load_weights"


class LoadWeightsResponse(Wire, frozen=True, kw_only=True):
    path: str | None = None
    model_id: str | None = None
    type: Literal["load_weights"] | None = None


class SaveWeightsRequest(StrictWire, frozen=True, kw_only=True):
    model_id: str
    path: str | None = None
    seq_id: int | None = None
    ttl_seconds: int | None = None
    overwrite: bool = False
    user_metadata: dict[str, str] | None = None
    type: Literal["save_weights"] = "save_weights"


class SaveWeightsResponse(Wire, frozen=True, kw_only=True):
    path: str
    type: Literal["save_weights"] | None = None


class SaveWeightsForSamplerRequest(StrictWire, frozen=True, kw_only=True):
    """Named (``path``) or unnamed (``sampling_session_seq_id``) sampler save."""

    model_id: str
    path: str | None = None
    sampling_session_seq_id: int | None = None
    kind: Literal["snapshot", "inflight"] = "snapshot"
    seq_id: int | None = None
    ttl_seconds: int | None = None
    user_metadata: dict[str, str] | None = None
    type: Literal["save_weights_for_sampler"] = "save_weights_for_sampler"


class SaveWeightsForSamplerResponseInternal(Wire, frozen=True, kw_only=True):
    """What the future answers: ``path`` for a named save, ``sampling_session_id`` otherwise."""

    path: str | None = None
    sampling_session_id: str | None = None
    type: Literal["save_weights_for_sampler"] | None = None


class SaveWeightsForSamplerResponse(Wire, frozen=True, kw_only=True):
    path: str
    type: Literal["save_weights_for_sampler"] | None = None


class SaveWeightsExternalRequest(StrictWire, frozen=True, kw_only=True):
    model_id: str
    path: str
    seq_id: int | None = None
    ttl_seconds: int | None = None
    age_encryption_recipients: list[str] | None = None
    type: Literal["save_weights_external"] = "save_weights_external"


class SaveWeightsExternalResponseInternal(Wire, frozen=True, kw_only=True):
    """What the ``save_weights_external`` future answers."""

    path: str | None = None
    size_bytes: int | None = None
    type: Literal["save_weights_external"] | None = None


class SaveWeightsExternalResponse(Wire, frozen=True, kw_only=True):
    path: str | None = None
    size_bytes: int | None = None
    type: Literal["save_weights_external"] | None = None


class UnloadModelRequest(StrictWire, frozen=True, kw_only=True):
    model_id: str
    type: Literal["unload_model"] = "unload_model"


class UnloadModelResponse(Wire, frozen=True, kw_only=True):
    model_id: str
    type: Literal["unload_model"] | None = None


class CopyWeightsRequest(StrictWire, frozen=True, kw_only=True):
    source_path: str
    session_id: str | None = None
    model_seq_id: int | None = None
    destination_project_id: str | None = None
    ttl_seconds: int | None = None
    weights_access_token: str | None = None


class CopyWeightsResponse(Wire, frozen=True, kw_only=True):
    tinker_path: str


class WeightsInfoRequest(StrictWire, frozen=True, kw_only=True):
    tinker_path: str


class WeightsInfoResponse(Wire, frozen=True, kw_only=True):
    base_model: str
    is_lora: bool
    optimizer_config: OptimizerConfig = AdamOptimizerConfig()
    lora_rank: int | None = None
    train_unembed: bool | None = None
    train_mlp: bool | None = None
    train_attn: bool | None = None
