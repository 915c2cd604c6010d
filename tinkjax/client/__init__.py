"""The client SDK: service, training, sampling and REST clients, futures, retries, downloads."""

from tinkjax.codec import WireMode

from ._backoff import Backoff, backoff_delay, retry_after_seconds
from ._chunking import chunk_data, combine_outputs, estimate_datum_bytes
from ._config import DEFAULT_BASE_URL, ClientConfig, mask_secrets, resolve_config
from ._custom_result import CustomForwardBackwardOutput
from ._download import CheckpointDownload, UnsafeArchiveError, safe_extract
from ._futures import APIFuture, ClientFuture
from ._loss_handle import LossHandle
from ._ratelimit import TenantRateLimiter, limiter_for
from ._rest import RestClient, apaginate, paginate
from ._sampling import SamplingClient, SamplingRetryConfig
from ._service import ServiceClient
from ._session import SessionContext
from ._telemetry import TelemetryReporter
from ._telemetry_capture import ExceptionCapture, capture_exceptions
from ._telemetry_events import is_user_error
from ._telemetry_retry import RetryHandler, default_retryable, with_retry, with_retry_async
from ._training import TrainingClient
from ._transport import Transport

__all__ = [
    "DEFAULT_BASE_URL",
    "APIFuture",
    "Backoff",
    "CheckpointDownload",
    "ClientConfig",
    "ClientFuture",
    "CustomForwardBackwardOutput",
    "ExceptionCapture",
    "LossHandle",
    "RestClient",
    "RetryHandler",
    "SamplingClient",
    "SamplingRetryConfig",
    "ServiceClient",
    "SessionContext",
    "TelemetryReporter",
    "TenantRateLimiter",
    "TrainingClient",
    "Transport",
    "UnsafeArchiveError",
    "WireMode",
    "apaginate",
    "backoff_delay",
    "capture_exceptions",
    "chunk_data",
    "combine_outputs",
    "default_retryable",
    "estimate_datum_bytes",
    "is_user_error",
    "limiter_for",
    "mask_secrets",
    "paginate",
    "resolve_config",
    "retry_after_seconds",
    "safe_extract",
    "with_retry",
    "with_retry_async",
]
