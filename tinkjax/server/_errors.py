"""Errors of the local backend and how they are answered.

Only errors the library raises on purpose blame the user::

    ApiError                      its own status (400, 401, 404, 405, 413, 415, ...)
    store UnknownIdError          404 (an unknown session, run, checkpoint or sampler)
    store StoreError, WireFormatError (malformed JSON/protobuf, bad names, bad paths)   400
    anything else                 500: a bug in the server, logged with its traceback

So a ``KeyError`` or ``TypeError`` escaping server code is answered 500 with a JSON body that
says it is the server's fault, never a 4xx that blames the request. The same mapping gives a
failed future its ``category`` (``user`` below 500, ``server`` otherwise).
"""

from __future__ import annotations

import json
from typing import Any

from tinkjax.errors import WireFormatError
from tinkjax.server._futures import Category
from tinkjax.server._store_errors import StoreError, UnknownIdError

__all__ = ["ApiError", "category_of", "describe", "error_body", "status_of"]


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


def status_of(exc: BaseException) -> int:
    """The HTTP status for an exception raised while handling a request (see the module doc)."""
    if isinstance(exc, ApiError):
        return exc.status
    if isinstance(exc, UnknownIdError):
        return 404
    if isinstance(exc, StoreError | WireFormatError):
        return 400
    return 500


def category_of(exc: BaseException) -> Category:
    """Who is to blame for a failed job: ``user`` for the library's own errors, else ``server``."""
    return "user" if status_of(exc) < 500 else "server"


def describe(exc: BaseException) -> str:
    """The message a client sees for ``exc``; a server bug names its type, not the user."""
    if isinstance(exc, ApiError):
        return exc.message
    text = str(exc) or type(exc).__name__
    if status_of(exc) >= 500:
        return f"internal server error ({type(exc).__name__}: {text}); see the server log"
    return text


def error_body(exc: BaseException, status: int) -> bytes:
    """The JSON body for ``exc``: ``{"detail", "type", "status", "field"?}``."""
    body: dict[str, Any] = {
        "detail": describe(exc),
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
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "unprocessable_entity",
}
