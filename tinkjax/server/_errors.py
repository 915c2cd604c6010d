"""HTTP errors of the local backend: every 4xx/5xx carries a JSON body naming the problem."""

from __future__ import annotations

import json
from typing import Any

__all__ = ["ApiError", "error_body", "status_of"]


class ApiError(Exception):
    """An error answered directly with ``status`` and ``{"detail": message, ...}``.

    Attributes:
        status: the HTTP status code.
        message: what was wrong (names the field and value).
        field: the offending field, when one is at fault.
        extra: more JSON fields for the body.
    """

    def __init__(
        self, status: int, message: str, *, field: str | None = None, **extra: Any
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field
        self.extra = extra


def bad_request(message: str, *, field: str | None = None) -> ApiError:
    """A 400 error."""
    return ApiError(400, message, field=field)


def not_found(message: str, *, field: str | None = None) -> ApiError:
    """A 404 error."""
    return ApiError(404, message, field=field)


def status_of(exc: BaseException) -> int:
    """The HTTP status for an exception raised while handling a request.

    ``ApiError`` carries its own; ``KeyError`` (unknown ids, from the store or the runtime)
    maps to 404; ``ValueError`` (which includes the wire ``DecodeError``/``WireFormatError``)
    and ``TypeError`` to 400; anything else is a server bug, 500.
    """
    if isinstance(exc, ApiError):
        return exc.status
    from tinkjax.errors import WireFormatError

    if isinstance(exc, WireFormatError):
        return 400
    if isinstance(exc, KeyError):
        return 404
    if isinstance(exc, ValueError | TypeError | OverflowError | UnicodeError):
        return 400
    return 500


def _message(exc: BaseException) -> str:
    if isinstance(exc, ApiError):
        return exc.message
    if isinstance(exc, KeyError) and exc.args and type(exc).__str__ is KeyError.__str__:
        return f"not found: {exc.args[0]}"
    text = str(exc) or type(exc).__name__
    return text


def error_body(exc: BaseException, status: int) -> bytes:
    """The JSON body for ``exc``: ``{"detail", "type", "status", "field"?}``."""
    body: dict[str, Any] = {
        "detail": _message(exc),
        "type": _TYPES.get(status, "server_error" if status >= 500 else "error"),
        "status": status,
    }
    field = getattr(exc, "field", None)
    if isinstance(field, str):
        body["field"] = field
    if isinstance(exc, ApiError):
        body.update(exc.extra)
    return json.dumps(body).encode()


_TYPES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "unprocessable_entity",
}
