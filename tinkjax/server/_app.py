"""The Starlette application: the route table of ``_routes`` over a :class:`Backend`.

Every handler reads its body under a size limit, decodes it with the wire codecs, and maps any
exception to a JSON error (``_errors.status_of``): malformed input is a 4xx naming the problem;
a bug in the server is a 500 with a JSON body and a logged traceback. Every route but the public
ones first authenticates the request's key (:class:`~tinkjax.server._auth.KeyPolicy`; 401
without an accepted key) and records its tenant as ``request.state.tenant``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tinkjax.server._auth import ARCHIVE_LINK_TTL_S, ArchiveTokens, KeyPolicy
from tinkjax.server._backend import Backend
from tinkjax.server._http import Handler, endpoint, http_exception
from tinkjax.server._routes import Get, Post, get_handler, post_handler, route_table

__all__ = ["AppConfig", "authenticated", "build_app"]


@dataclass(frozen=True, kw_only=True)
class AppConfig:
    """Limits of one app: body size, how long ``retrieve_future`` holds a poll, the keys it
    accepts and how long an archive download link lives."""

    max_body_bytes: int
    long_poll_s: float
    policy: KeyPolicy = field(default_factory=KeyPolicy)
    archive_link_ttl_s: float = ARCHIVE_LINK_TTL_S


def authenticated(handler: Handler, policy: KeyPolicy) -> Handler:
    """``handler`` for requests with an accepted key (401 otherwise), its tenant recorded."""

    async def wrapper(request: Request) -> Response:
        request.state.tenant = policy.tenant(request.headers)
        return await handler(request)

    wrapper.__name__ = getattr(handler, "__name__", "handler")
    return wrapper


def build_app(backend: Backend, config: AppConfig) -> Starlette:
    """The ASGI app serving ``backend``."""
    tenancy = backend.tenancy
    routes = []
    table = route_table(
        backend, policy=config.policy,
        archive_tokens=ArchiveTokens(ttl_s=config.archive_link_ttl_s),
        max_body_bytes=config.max_body_bytes, long_poll_s=config.long_poll_s,
    )  # fmt: skip
    for row in table:
        handler: Handler
        methods: tuple[str, ...]
        public = False
        if isinstance(row, Post):
            handler, methods = post_handler(row, config.max_body_bytes, tenancy), ("POST",)
        elif isinstance(row, Get):
            handler, methods, public = get_handler(row, tenancy), ("GET",), row.public
        else:
            handler, methods, public = row.handler, row.methods, row.public
        if not public:
            handler = authenticated(handler, config.policy)
        routes.append(Route(row.path, endpoint(handler), methods=list(methods)))
    app = Starlette(
        routes=routes,
        exception_handlers={HTTPException: http_exception, Exception: http_exception},
    )
    app.state.backend = backend
    return app
