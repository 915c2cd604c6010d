"""HTTP plumbing of the app: bodies under a size limit, JSON answers, errors, query pages.

Every endpoint is wrapped by :func:`endpoint`: an exception becomes a JSON error with the status
``_errors.status_of`` gives it; a server bug (500) is also logged with its traceback.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from tinkjax.codec import encode_json
from tinkjax.server._errors import ApiError, error_body, status_of

__all__ = [
    "Handler",
    "allow",
    "digest",
    "endpoint",
    "error_response",
    "http_exception",
    "json_response",
    "page",
    "read_body",
    "read_json_body",
]

_log = logging.getLogger("tinkjax.server")
Handler = Callable[[Request], Awaitable[Response]]


def json_response(obj: Any, status: int = 200) -> Response:
    """``obj`` (a wire Struct or builtins) as a JSON response."""
    return Response(encode_json(obj), status_code=status, media_type="application/json")


def error_response(exc: BaseException) -> Response:
    """The JSON error answer for ``exc``."""
    status = status_of(exc)
    return Response(error_body(exc, status), status_code=status, media_type="application/json")


def endpoint(fn: Handler) -> Handler:
    """``fn`` answering any exception as a JSON error (a 500 logs its traceback)."""

    async def wrapper(request: Request) -> Response:
        try:
            return await fn(request)
        except Exception as exc:
            if status_of(exc) >= 500:
                _log.exception("internal error in %s %s", request.method, request.url.path)
            return error_response(exc)

    wrapper.__name__ = fn.__name__
    return wrapper


async def http_exception(request: Request, exc: Exception) -> Response:
    """Starlette's own errors (no route: 404, wrong method: 405) as JSON errors."""
    if not isinstance(exc, HTTPException):
        _log.error("internal error in %s %s", request.method, request.url.path, exc_info=exc)
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    detail = exc.detail if isinstance(exc, HTTPException) else str(exc)
    return error_response(ApiError(status, f"{request.method} {request.url.path}: {detail}"))


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused (413) past ``limit`` bytes and (415) when compressed."""
    encoding = request.headers.get("content-encoding", "identity").lower()
    if encoding not in ("", "identity"):
        raise ApiError(
            415, f"Content-Encoding {encoding!r} is not supported (send it uncompressed)"
        )
    length = request.headers.get("content-length")
    if length is not None:
        try:
            declared = int(length)
        except ValueError:
            raise ApiError(400, f"Content-Length {length!r} is not an integer") from None
        if declared > limit:
            raise ApiError(413, f"request body of {declared} bytes exceeds {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ApiError(413, f"request body exceeds {limit} bytes")
            chunks.append(chunk)
    except ClientDisconnect:  # gone, or closed for sending nothing in time: not a server bug
        raise ApiError(408, f"the connection closed after {size} bytes of the body") from None
    return b"".join(chunks)


async def read_json_body(request: Request, limit: int) -> bytes:
    """A non-empty body (a JSON object is expected)."""
    body = await read_body(request, limit)
    if not body.strip():
        raise ApiError(400, "empty request body; expected a JSON object")
    return body


def allow(method: str, *allowed: str) -> None:
    """405 unless ``method`` is one of ``allowed``."""
    if method not in allowed:
        raise ApiError(405, f"method {method} not allowed here; use {' or '.join(allowed)}")


def page(query: Mapping[str, str], default_limit: int) -> tuple[int, int]:
    """``(limit, offset)`` from a query string, each in ``[0, 10000]``."""
    out = []
    for name, default in (("limit", default_limit), ("offset", 0)):
        raw = query.get(name)
        try:
            value = default if raw is None else int(raw)
        except ValueError:
            raise ApiError(400, f"{name}: expected an integer, got {raw!r}", field=name) from None
        if value < 0 or value > 10_000:
            raise ApiError(400, f"{name}: {value} outside [0, 10000]", field=name)
        out.append(value)
    return out[0], out[1]


def digest(body: bytes) -> str:
    """The hash that identifies a request body (duplicate detection)."""
    return hashlib.sha256(body).hexdigest()
