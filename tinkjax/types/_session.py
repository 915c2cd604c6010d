"""Client configuration handshake, sessions and heartbeats, server capabilities."""

from __future__ import annotations

from typing import Any, Literal

from ._base import StrictWire, Wire

__all__ = [
    "ClientConfigRequest",
    "ClientConfigResponse",
    "ClientDynamicConfigResponse",
    "CreateSessionRequest",
    "CreateSessionResponse",
    "GetServerCapabilitiesResponse",
    "HealthResponse",
    "SessionFinishReason",
    "SessionFinishRequest",
    "SessionHeartbeatRequest",
    "SessionHeartbeatResponse",
    "SupportedModel",
]


class ClientConfigRequest(StrictWire, frozen=True, kw_only=True):
    sdk_version: str


class ClientConfigResponse(Wire, frozen=True, kw_only=True):
    """Server feature flags; every field has a default, so ``{}`` is a valid answer."""

    pjwt_auth_enabled: bool = False
    credential_default_source: str = "api_key"
    sample_dispatch_bytes_semaphore_size: int = 10 * 1024 * 1024
    inflight_response_bytes_semaphore_size: int = 50 * 1024 * 1024
    parallel_fwdbwd_chunks: bool = True
    proto_compress_fwdbwd: bool = False
    fwdbwd_max_chunk_len: int = 1024
    fwdbwd_max_chunk_bytes_count: int = 5_000_000
    fwdbwd_dispatch_bytes_semaphore_size: int = 50_000_000
    billing_exception_max_pause_duration_sec: int = 3600
    sample_no_retries: bool = False
    sample_enable_stuck_detection: bool = True
    sample_max_concurrent_requests: int = 2000
    use_pyqwest_transport: bool = True
    sample_use_retrieve_futures: bool = False
    custom_loss_server_side: bool = False
    sample_join_sampling_session: bool = False


class ClientDynamicConfigResponse(Wire, frozen=True, kw_only=True):
    refresh_interval_sec: int = 300
    sample_cancel_enabled: bool = False
    sample_cancel_max_batch_size: int = 64


class CreateSessionRequest(StrictWire, frozen=True, kw_only=True):
    tags: list[str]
    sdk_version: str
    # Required (nullable) in the SDK's model, but ``None`` is omitted on the wire
    # (``exclude_none``), so decoding must accept its absence.
    user_metadata: dict[str, Any] | None = None
    project_id: str | None = None
    display_name: str | None = None
    type: Literal["create_session"] = "create_session"


class CreateSessionResponse(Wire, frozen=True, kw_only=True):
    session_id: str
    info_message: str | None = None
    warning_message: str | None = None
    error_message: str | None = None
    type: Literal["create_session"] = "create_session"


class SessionHeartbeatRequest(StrictWire, frozen=True, kw_only=True):
    session_id: str
    type: Literal["session_heartbeat"] = "session_heartbeat"


class SessionHeartbeatResponse(Wire, frozen=True, kw_only=True):
    type: Literal["session_heartbeat"] = "session_heartbeat"


class SessionFinishReason(StrictWire, frozen=True, kw_only=True):
    type: Literal["success", "errored", "interrupted"]


class SessionFinishRequest(StrictWire, frozen=True, kw_only=True):
    """``/sessions/{id}/finish``; ``detail`` is sent even when null."""

    __wire_keep_none__ = ("detail",)

    reason: SessionFinishReason
    detail: str | None = None


class SupportedModel(Wire, frozen=True, kw_only=True):
    model_name: str | None = None
    max_context_length: int | None = None
    trainable: bool | None = None
    sampleable: bool | None = None


class GetServerCapabilitiesResponse(Wire, frozen=True, kw_only=True):
    supported_models: list[SupportedModel]


class HealthResponse(Wire, frozen=True, kw_only=True):
    status: Literal["ok"]
