"""The one exception tree of tinkjax.

Names follow the official ``tinker`` SDK so code written against it keeps working::

    TinkerError                          (alias: TinkJaxError)
    ├── APIError
    │   ├── APIStatusError               an HTTP answer with a non-2xx status
    │   │   ├── BadRequestError          400
    │   │   ├── AuthenticationError      401
    │   │   ├── BillingError             402
    │   │   ├── PermissionDeniedError    403
    │   │   ├── NotFoundError            404
    │   │   ├── ConflictError            409
    │   │   ├── UnprocessableEntityError 422
    │   │   ├── FutureExpiredError       410 from retrieve_future: the promise expired
    │   │   ├── RateLimitError           429
    │   │   └── InternalServerError      >= 500
    │   ├── APIConnectionError           no answer (reset, refused, DNS, ...)
    │   │   └── APITimeoutError          no answer in time
    │   │       └── FutureTimeoutError   (TimeoutError) a future that did not resolve: the
    │   │                                timeout passed, or the server kept failing
    │   └── APIResponseValidationError   an answer we could not decode
    ├── RequestFailedError               a future that failed server-side (``.category``)
    ├── WireFormatError (ValueError)     bytes or values that break the wire contract
    │   ├── DecodeError                  malformed JSON or protobuf
    │   ├── TensorError                  wrong dtype, or a shape that does not match its data
    │   └── LossInputKeyError (KeyError) an unknown loss-function input key
    ├── ConfigurationError (ValueError)  bad client configuration
    ├── EngineInputError (ValueError)    bad custom-loss data or specs, found before compiling
    └── CustomLossError (RuntimeError)   a custom-loss step failed; no gradient was sent
        ├── NonFiniteError               a NaN/Inf value or gradient (names term and datum)
        └── RegularizerError             a regularizer's async ``prepare`` failed or timed out

Every message names the field and the offending value.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIResponseValidationError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "BillingError",
    "ConfigurationError",
    "ConflictError",
    "CustomLossError",
    "DecodeError",
    "EngineInputError",
    "FutureExpiredError",
    "FutureTimeoutError",
    "InternalServerError",
    "LossInputKeyError",
    "NonFiniteError",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitError",
    "RegularizerError",
    "RequestErrorCategory",
    "RequestFailedError",
    "TensorError",
    "TinkJaxError",
    "TinkerError",
    "UnprocessableEntityError",
    "WireFormatError",
    "status_error_class",
]


class TinkerError(Exception):
    """Base class of every exception tinkjax raises on purpose."""


TinkJaxError = TinkerError


class APIError(TinkerError):
    """A failure talking to the service."""

    def __init__(self, message: str, *, request: Any = None, body: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.request = request
        self.body = body


class APIStatusError(APIError):
    """The server answered with a non-success HTTP status."""

    status_code: int

    def __init__(
        self, message: str, *, status_code: int, response: Any = None, body: Any = None
    ) -> None:
        super().__init__(message, body=body)
        self.status_code = status_code
        self.response = response


class BadRequestError(APIStatusError):
    """HTTP 400."""


class AuthenticationError(APIStatusError):
    """HTTP 401."""


class BillingError(APIStatusError):
    """HTTP 402."""


class PermissionDeniedError(APIStatusError):
    """HTTP 403."""


class NotFoundError(APIStatusError):
    """HTTP 404."""


class ConflictError(APIStatusError):
    """HTTP 409."""


class UnprocessableEntityError(APIStatusError):
    """HTTP 422."""


class RateLimitError(APIStatusError):
    """HTTP 429."""


class FutureExpiredError(APIStatusError):
    """HTTP 410 while polling a future: the server no longer holds it (resubmit the request)."""


class InternalServerError(APIStatusError):
    """HTTP 5xx."""


_STATUS_CLASSES: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    402: BillingError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    422: UnprocessableEntityError,
    429: RateLimitError,
}


def status_error_class(status_code: int) -> type[APIStatusError]:
    """The exception class the SDK raises for an HTTP status code."""
    if status_code >= 500:
        return InternalServerError
    return _STATUS_CLASSES.get(status_code, APIStatusError)


class APIConnectionError(APIError):
    """No HTTP answer: connection refused or reset, DNS failure, protocol error."""

    def __init__(self, message: str = "Connection error.", *, request: Any = None) -> None:
        super().__init__(message, request=request)


class APITimeoutError(APIConnectionError):
    """No HTTP answer within the timeout."""

    def __init__(self, message: str = "Request timed out.", *, request: Any = None) -> None:
        super().__init__(message, request=request)


class FutureTimeoutError(APITimeoutError, TimeoutError):
    """A future did not resolve: the caller's ``timeout`` passed, or the server answered
    nothing but errors (429, 5xx, no answer) for longer than the client's
    ``poll_error_timeout``. The request may still run on the server.

    Attributes:
        request_id: the server's id of the request (``None`` when it was not submitted yet).
        request_type: what was waited on (``ForwardBackward``, ``Sample``, ...), if known.
        waited_s: how long it was waited for, seconds.
        last_error: the last error seen while polling (``None`` when the server answered).
    """

    def __init__(
        self,
        message: str,
        *,
        request_id: str | None = None,
        request_type: str | None = None,
        waited_s: float | None = None,
        last_error: str | None = None,
    ) -> None:
        super().__init__(message)
        self.request_id = request_id
        self.request_type = request_type
        self.waited_s = waited_s
        self.last_error = last_error


class APIResponseValidationError(APIError):
    """The server answered, but the body does not match the expected type."""


class RequestErrorCategory(StrEnum):
    """Who is to blame for a failed request (``category`` of a failed future)."""

    UNKNOWN = "unknown"
    SERVER = "server"
    USER = "user"


class RequestFailedError(TinkerError):
    """A submitted request failed on the server (the future answered ``{"error", "category"}``)."""

    def __init__(
        self,
        message: str,
        *,
        request_id: str | None = None,
        category: RequestErrorCategory | str = RequestErrorCategory.UNKNOWN,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.request_id = request_id
        try:
            self.category = RequestErrorCategory(category)
        except ValueError:
            self.category = RequestErrorCategory.UNKNOWN


class WireFormatError(TinkerError, ValueError):
    """Bytes or values that break the wire contract.

    Attributes:
        field: dotted path of the offending field (e.g. ``data[3].loss_fn_inputs.weights``),
            or ``None`` when the whole payload is at fault.
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field


class DecodeError(WireFormatError):
    """A payload is not valid JSON/protobuf, or does not match the expected type."""


class TensorError(WireFormatError):
    """A tensor's dtype is not allowed, or its shape does not match its data."""


class LossInputKeyError(WireFormatError, KeyError):
    """A loss-function input key that the loss (or the dtype rules) does not know."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class ConfigurationError(TinkerError, ValueError):
    """Bad client configuration (missing or malformed API key, base URL, ...)."""


class EngineInputError(TinkerError, ValueError):
    """Custom-loss input data or a loss/regularizer spec is malformed (names the field)."""


class CustomLossError(TinkerError, RuntimeError):
    """A custom-loss step failed; no gradient was sent for it."""


class NonFiniteError(CustomLossError):
    """A loss value or gradient is NaN or infinite. Nothing was sent to the server.

    Attributes:
        term: ``"base"`` or the regularizer's name (``"loss_total"`` when no single term is at
            fault, ``"logprobs"`` when the input logprobs themselves are not finite).
        datum: index of the first datum whose gradient (or input) is not finite, or ``None``
            when only a scalar value is.
    """

    def __init__(self, message: str, *, term: str | None = None, datum: int | None = None) -> None:
        super().__init__(message)
        self.term = term
        self.datum = datum


class RegularizerError(CustomLossError):
    """A regularizer's asynchronous ``prepare`` step raised or timed out.

    Attributes:
        name: the regularizer's name.
    """

    def __init__(self, message: str, *, name: str) -> None:
        super().__init__(message)
        self.name = name
