"""Futures: the submission ack, the ``retrieve_future`` request and its non-result answers."""

from __future__ import annotations

from typing import Literal

import msgspec

from tinkjax.errors import RequestErrorCategory

from ._base import StrictWire, Wire

__all__ = [
    "FutureFailed",
    "FutureFinished",
    "FutureRetrieveRequest",
    "FuturesRetrieveRequest",
    "FuturesRetrieveResponse",
    "MetadataOnlyResponse",
    "QueueState",
    "RequestErrorCategory",
    "RequestFailedResponse",
    "SamplingSessionFuturesTarget",
    "TryAgainResponse",
    "UntypedAPIFuture",
]

QueueState = Literal["active", "paused_capacity", "paused_rate_limit"]


class UntypedAPIFuture(Wire, frozen=True, kw_only=True):
    """The answer to a submission: the id to poll, and per-sample sequence ids for samples."""

    request_id: str
    model_id: str | None = None
    sample_sequence_ids: list[str] | None = None


class FutureRetrieveRequest(StrictWire, frozen=True, kw_only=True):
    request_id: str
    allow_metadata_only: bool = False


class TryAgainResponse(Wire, frozen=True, kw_only=True, tag="try_again", tag_field="type"):
    """Still pending (HTTP 408 or 2xx): poll again."""

    request_id: str
    queue_state: QueueState = "active"
    queue_state_reason: str | None = None


class RequestFailedResponse(Wire, frozen=True, kw_only=True):
    """A failed request: ``{"error", "category"}``."""

    error: str
    category: RequestErrorCategory = RequestErrorCategory.UNKNOWN


class MetadataOnlyResponse(Wire, frozen=True, kw_only=True):
    """Done, but the payload is large: reserve ``response_payload_size`` bytes, poll again."""

    status: Literal["complete_metadata"]
    response_payload_size: int


class SamplingSessionFuturesTarget(StrictWire, frozen=True, kw_only=True):
    sampling_session_id: str
    cloned_sampler_id: int = 0
    type: Literal["sampling_session"] = "sampling_session"


class FuturesRetrieveRequest(StrictWire, frozen=True, kw_only=True):
    target: SamplingSessionFuturesTarget
    prev_cursor: int = 0
    timeout: float | None = None
    retrieved_request_ids: list[str] = msgspec.field(default_factory=list)


class FutureFinished(Wire, frozen=True, kw_only=True, tag="finished", tag_field="state"):
    request_id: str
    response_payload_uncompressed_size: int | None = None


class FutureFailed(Wire, frozen=True, kw_only=True, tag="failed", tag_field="state"):
    request_id: str


class FuturesRetrieveResponse(Wire, frozen=True, kw_only=True):
    completions: list[FutureFinished | FutureFailed]
    cursor: int
