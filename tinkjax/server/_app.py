"""The Starlette application: the route table of ``_routes`` over a :class:`Backend`.

Every handler reads its body under a size limit, decodes it with the wire codecs, and maps any
exception to a JSON error (``_errors.status_of``): malformed input is a 4xx naming the problem;
a bug in the server is a 500 with a JSON body and a logged traceback.
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.routing import Route

from tinkjax.server._backend import Backend
from tinkjax.server._http import Handler, endpoint, http_exception
from tinkjax.server._routes import Get, Post, get_handler, post_handler, route_table

__all__ = ["AppConfig", "build_app"]


@dataclass(frozen=True, kw_only=True)
class AppConfig:
    """Limits of one app: body size and how long ``retrieve_future`` holds a poll."""

    max_body_bytes: int
    long_poll_s: float


def build_app(backend: Backend, config: AppConfig) -> Starlette:
    """The ASGI app serving ``backend``."""
    routes = []
    table = route_table(
        backend, max_body_bytes=config.max_body_bytes, long_poll_s=config.long_poll_s
    )
    for row in table:
        handler: Handler
        methods: tuple[str, ...]
        if isinstance(row, Post):
            handler, methods = post_handler(row, config.max_body_bytes), ("POST",)
        elif isinstance(row, Get):
            handler, methods = get_handler(row), ("GET",)
        else:
            handler, methods = row.handler, row.methods
        routes.append(Route(row.path, endpoint(handler), methods=list(methods)))
    app = Starlette(
        routes=routes,
        exception_handlers={HTTPException: http_exception, Exception: http_exception},
    )
    app.state.backend = backend
    return app
