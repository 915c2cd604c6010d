"""The client SDK: service, training, sampling and REST clients, futures, retries, downloads."""

from tinkjax.codec import WireMode

from ._backoff import Backoff, backoff_delay, retry_after_seconds
from ._chunking import chunk_data, combine_outputs, estimate_datum_bytes
from ._config import DEFAULT_BASE_URL, ClientConfig, mask_secrets, resolve_config
from ._custom_result import CustomForwardBackwardOutput
from ._download import CheckpointDownload, UnsafeArchiveError, safe_extract
from ._futures import APIFuture, ClientFuture
from ._ratelimit import TenantRateLimiter, limiter_for
from ._rest import RestClient, apaginate, paginate
from ._sampling import SamplingClient, SamplingRetryConfig
from ._service import ServiceClient
from ._session import SessionContext
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
    "RestClient",
    "SamplingClient",
    "SamplingRetryConfig",
    "ServiceClient",
    "SessionContext",
    "TenantRateLimiter",
    "TrainingClient",
    "Transport",
    "UnsafeArchiveError",
    "WireMode",
    "apaginate",
    "backoff_delay",
    "chunk_data",
    "combine_outputs",
    "estimate_datum_bytes",
    "limiter_for",
    "mask_secrets",
    "paginate",
    "resolve_config",
    "retry_after_seconds",
    "safe_extract",
]
