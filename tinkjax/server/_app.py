"""The Starlette application: routes of the Tinker protocol over a :class:`Backend`.

Every handler reads its body under a size limit, decodes it with the wire codecs, and maps any
exception to a JSON error (``_errors.status_of``): malformed input is a 4xx naming the problem,
never a 500. Path parameters may contain ``:`` (model ids) and ``/`` (checkpoint ids).
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from email.utils import formatdate
from typing import Any, TypeVar

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response
from starlette.routing import Route

from tinkjax.codec import (
    decode_forward_backward_request,
    decode_json,
    encode_forward_backward_output,
    encode_json,
    encode_sample_response,
)
from tinkjax.server._backend import Backend
from tinkjax.server._errors import ApiError, error_body, status_of
from tinkjax.types import (
    ClientConfigResponse,
    ClientDynamicConfigResponse,
    CreateModelRequest,
    CreateSamplingSessionRequest,
    CreateSessionRequest,
    CreateSessionResponse,
    ForwardBackwardOutput,
    ForwardBackwardRequest,
    ForwardRequest,
    FutureRetrieveRequest,
    GetInfoRequest,
    GetServerCapabilitiesResponse,
    LoadWeightsRequest,
    OptimStepRequest,
    RequestFailedResponse,
    SampleRequest,
    SampleResponse,
    SaveWeightsForSamplerRequest,
    SaveWeightsRequest,
    SessionFinishRequest,
    SessionHeartbeatRequest,
    SessionHeartbeatResponse,
    TryAgainResponse,
    UnloadModelRequest,
    WeightsInfoRequest,
)

__all__ = ["AppConfig", "build_app"]

_log = logging.getLogger("tinkjax.server")
_T = TypeVar("_T")
PROTOBUF = "application/x-protobuf"
#: How long an archive download link (the 302 target) stays valid.
ARCHIVE_LINK_TTL_S = 3600.0
Handler = Callable[[Request], Awaitable[Response]]


class AppConfig:
    """Limits of one app: body size and how long ``retrieve_future`` holds a poll."""

    def __init__(self, *, max_body_bytes: int, long_poll_s: float) -> None:
        self.max_body_bytes = max_body_bytes
        self.long_poll_s = long_poll_s


def _json(obj: Any, status: int = 200) -> Response:
    return Response(encode_json(obj), status_code=status, media_type="application/json")


def _error(exc: BaseException) -> Response:
    status = status_of(exc)
    if status >= 500:
        _log.error("internal error", exc_info=exc)
    return Response(error_body(exc, status), status_code=status, media_type="application/json")


def _endpoint(fn: Handler) -> Handler:
    async def wrapper(request: Request) -> Response:
        try:
            return await fn(request)
        except Exception as exc:
            return _error(exc)

    wrapper.__name__ = fn.__name__
    return wrapper


def _decode(body: bytes, tp: type[_T]) -> _T:
    return decode_json(body, tp)


class _Routes:
    def __init__(self, backend: Backend, config: AppConfig) -> None:
        self.backend = backend
        self.store = backend.store
        self.config = config
        # Archive downloads: token -> ((model_id, checkpoint_id), created), valid for an hour.
        self._downloads: dict[str, tuple[tuple[str, str], float]] = {}
        self._downloads_lock = threading.Lock()

    # ----------------------------------------------------------------- plumbing

    async def body(self, request: Request) -> bytes:
        limit = self.config.max_body_bytes
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
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ApiError(413, f"request body exceeds {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def json_body(self, request: Request) -> bytes:
        body = await self.body(request)
        if not body.strip():
            raise ApiError(400, "empty request body; expected a JSON object")
        return body

    # ----------------------------------------------------------------- session

    async def client_config(self, request: Request) -> Response:
        body = await self.json_body(request)
        _decode(body, dict[str, Any])
        return _json(ClientConfigResponse())

    async def dynamic_config(self, request: Request) -> Response:
        body = await self.json_body(request)
        _decode(body, dict[str, Any])
        return _json(ClientDynamicConfigResponse())

    async def create_session(self, request: Request) -> Response:
        req = _decode(await self.json_body(request), CreateSessionRequest)
        session_id = str(uuid.uuid4())
        await run_in_threadpool(
            lambda: self.store.add_session(
                session_id,
                tags=req.tags,
                user_metadata=req.user_metadata,
                sdk_version=req.sdk_version,
                display_name=req.display_name,
            )
        )
        return _json(CreateSessionResponse(session_id=session_id))

    async def heartbeat(self, request: Request) -> Response:
        req = _decode(await self.json_body(request), SessionHeartbeatRequest)
        await run_in_threadpool(self.store.heartbeat, req.session_id)
        return _json(SessionHeartbeatResponse())

    async def finish_session(self, request: Request) -> Response:
        session_id = request.path_params["session_id"]
        req = _decode(await self.json_body(request), SessionFinishRequest)
        await run_in_threadpool(
            lambda: self.store.finish_session(session_id, reason=req.reason.type, detail=req.detail)
        )
        return _json({})

    async def list_sessions(self, request: Request) -> Response:
        limit, offset = _page(request, 20)
        return _json(self.store.list_sessions(limit=limit, offset=offset))

    async def get_session(self, request: Request) -> Response:
        return _json(self.store.get_session(request.path_params["session_id"]))

    async def telemetry(self, request: Request) -> Response:
        raw = _decode(await self.json_body(request), dict[str, Any])
        events = raw.get("events")
        if not isinstance(events, list):
            raise ApiError(400, "events: expected a list of event objects", field="events")
        session_id = raw.get("session_id")
        if session_id is not None and not isinstance(session_id, str):
            raise ApiError(400, f"session_id: expected a string, got {session_id!r}")
        for i, event in enumerate(events):
            if not isinstance(event, dict):
                raise ApiError(400, f"events[{i}]: expected an object, got {event!r}")
        await run_in_threadpool(self.store.add_telemetry, session_id, events)
        return _json({"status": "accepted"})

    async def telemetry_events(self, request: Request) -> Response:
        q = request.query_params
        limit, _ = _page(request, 100)
        events = self.store.query_telemetry(
            session_id=q.get("session_id"), event_name=q.get("event_name"), limit=limit
        )
        return _json({"events": events})

    async def healthz(self, request: Request) -> Response:
        return _json({"status": "ok"})

    async def capabilities(self, request: Request) -> Response:
        models = await run_in_threadpool(self.backend.capabilities)
        return _json(GetServerCapabilitiesResponse(supported_models=models))

    # ----------------------------------------------------------------- models & training

    async def create_model(self, request: Request) -> Response:
        body = await self.json_body(request)
        req = _decode(body, CreateModelRequest)
        fut = await run_in_threadpool(self.backend.submit_create_model, req, _digest(body))
        return _json(fut)

    async def get_info(self, request: Request) -> Response:
        req = _decode(await self.json_body(request), GetInfoRequest)
        return _json(await run_in_threadpool(self.backend.get_info, req.model_id))

    async def forward_backward(self, request: Request) -> Response:
        body = await self.body(request)
        content_type = request.headers.get("content-type", "").lower()
        req: ForwardBackwardRequest | ForwardRequest
        if "protobuf" in content_type or "octet-stream" in content_type:
            req = await run_in_threadpool(decode_forward_backward_request, body)
        else:
            if not body.strip():
                raise ApiError(400, "empty request body")
            req = await run_in_threadpool(_decode, body, ForwardBackwardRequest)
        fut = await run_in_threadpool(self.backend.submit_forward_backward, req, _digest(body))
        return _json(fut)

    async def forward(self, request: Request) -> Response:
        body = await self.json_body(request)
        req = await run_in_threadpool(_decode, body, ForwardRequest)
        fut = await run_in_threadpool(self.backend.submit_forward_backward, req, _digest(body))
        return _json(fut)

    async def optim_step(self, request: Request) -> Response:
        body = await self.json_body(request)
        req = _decode(body, OptimStepRequest)
        return _json(await run_in_threadpool(self.backend.submit_optim_step, req, _digest(body)))

    async def save_weights(self, request: Request) -> Response:
        body = await self.json_body(request)
        req = _decode(body, SaveWeightsRequest)
        return _json(await run_in_threadpool(self.backend.submit_save_weights, req, _digest(body)))

    async def save_weights_for_sampler(self, request: Request) -> Response:
        body = await self.json_body(request)
        req = _decode(body, SaveWeightsForSamplerRequest)
        fut = await run_in_threadpool(
            self.backend.submit_save_weights_for_sampler, req, _digest(body)
        )
        return _json(fut)

    async def load_weights(self, request: Request) -> Response:
        body = await self.json_body(request)
        req = _decode(body, LoadWeightsRequest)
        return _json(await run_in_threadpool(self.backend.submit_load_weights, req, _digest(body)))

    async def unload_model(self, request: Request) -> Response:
        req = _decode(await self.json_body(request), UnloadModelRequest)
        return _json(await run_in_threadpool(self.backend.submit_unload_model, req))

    async def weights_info(self, request: Request) -> Response:
        req = _decode(await self.json_body(request), WeightsInfoRequest)
        try:
            info = await run_in_threadpool(self.store.weights_info, req.tinker_path)
        except KeyError:
            raise ApiError(
                404, f"tinker_path: no checkpoint at {req.tinker_path!r}", field="tinker_path"
            ) from None
        return _json(info)

    # ----------------------------------------------------------------- sampling

    async def create_sampling_session(self, request: Request) -> Response:
        req = _decode(await self.json_body(request), CreateSamplingSessionRequest)
        return _json(await run_in_threadpool(self.backend.submit_create_sampling_session, req))

    async def get_sampler(self, request: Request) -> Response:
        sampler_id = request.path_params["sampler_id"]
        return _json(await run_in_threadpool(self.backend.get_sampler, sampler_id))

    async def asample(self, request: Request) -> Response:
        body = await self.json_body(request)
        req = await run_in_threadpool(_decode, body, SampleRequest)
        return _json(await run_in_threadpool(self.backend.submit_sample, req))

    async def cancel_future(self, request: Request) -> Response:
        _decode(await self.json_body(request), dict[str, Any])
        return _json({})

    # ----------------------------------------------------------------- futures

    async def retrieve_future(self, request: Request) -> Response:
        req = _decode(await self.json_body(request), FutureRetrieveRequest)
        record = await self.backend.futures.wait(req.request_id, self.config.long_poll_s)
        if record is None:
            raise ApiError(
                404, f"request_id: unknown request {req.request_id!r}", field="request_id"
            )
        if record.state == "pending":
            return _json(TryAgainResponse(request_id=req.request_id, queue_state="active"), 408)
        if record.state == "failed":
            return _json(
                RequestFailedResponse(error=record.error or "failed", category=record.category)  # type: ignore[arg-type]
            )
        result = record.result
        accept = request.headers.get("accept", "")
        if PROTOBUF in accept and isinstance(result, ForwardBackwardOutput | SampleResponse):
            encode = (
                encode_forward_backward_output
                if isinstance(result, ForwardBackwardOutput)
                else encode_sample_response
            )
            data = await run_in_threadpool(encode, result)  # type: ignore[arg-type]
            return Response(data, media_type=PROTOBUF)
        return Response(await run_in_threadpool(encode_json, result), media_type="application/json")

    # ----------------------------------------------------------------- REST

    async def user_checkpoints(self, request: Request) -> Response:
        limit, offset = _page(request, 100)
        return _json(self.store.list_user_checkpoints(limit=limit, offset=offset))

    async def training_runs(self, request: Request) -> Response:
        limit, offset = _page(request, 20)
        return _json(self.store.list_training_runs(limit=limit, offset=offset))

    async def training_run_path(self, request: Request) -> Response:
        """``/training_runs/{run}[/checkpoints[/{kind}/{name}[/archive|publish|ttl]]]``."""
        parts = request.path_params["rest"].split("/")
        method = request.method
        run_id = parts[0]
        if not run_id:
            raise ApiError(404, "training run id missing from the path")
        if len(parts) == 1:
            _allow(method, "GET")
            return _json(await run_in_threadpool(self.store.get_training_run, run_id))
        if parts[1] != "checkpoints":
            raise ApiError(404, f"no route for {request.url.path}")
        if len(parts) == 2:
            _allow(method, "GET")
            return _json(await run_in_threadpool(self.store.list_checkpoints, run_id))
        if len(parts) < 4:
            raise ApiError(
                404, f"checkpoint id must look like <kind>/<name>, got {'/'.join(parts[2:])!r}"
            )
        checkpoint_id = f"{parts[2]}/{parts[3]}"
        action = "/".join(parts[4:])
        if action == "":
            _allow(method, "DELETE", "GET")
            if method == "GET":
                return _json(self.store.get_checkpoint(run_id, checkpoint_id))
            await run_in_threadpool(self.store.delete_checkpoint, run_id, checkpoint_id)
            return _json({})
        if action == "archive":
            _allow(method, "GET")
            self.store.get_checkpoint(run_id, checkpoint_id)
            token = secrets.token_urlsafe(16)
            with self._downloads_lock:
                now = time.time()
                self._downloads = {
                    k: v for k, v in self._downloads.items() if now - v[1] <= ARCHIVE_LINK_TTL_S
                }
                self._downloads[token] = ((run_id, checkpoint_id), now)
            expires = formatdate(time.time() + ARCHIVE_LINK_TTL_S, usegmt=True)
            return RedirectResponse(
                f"{request.base_url}api/v1/archives/{token}.tar.gz",
                status_code=302,
                headers={"Expires": expires},
            )
        if action == "publish":
            _allow(method, "POST", "DELETE")
            self.store.set_checkpoint_public(run_id, checkpoint_id, method == "POST")
            return _json({})
        if action == "ttl":
            _allow(method, "PUT")
            raw = _decode(await self.json_body(request), dict[str, Any])
            ttl = raw.get("ttl_seconds")
            if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int) or ttl < 1):
                raise ApiError(400, f"ttl_seconds: expected a positive int or null, got {ttl!r}")
            self.store.set_checkpoint_ttl(run_id, checkpoint_id, ttl)
            return _json({})
        raise ApiError(404, f"no route for {request.url.path}")

    async def archive(self, request: Request) -> Response:
        token = request.path_params["token"]
        with self._downloads_lock:
            target, created = self._downloads.get(token, (None, 0.0))
        if target is None or time.time() - created > ARCHIVE_LINK_TTL_S:
            raise ApiError(404, f"unknown or expired archive link {token!r}")
        path = await run_in_threadpool(self.store.archive_path, *target)
        name = target[1].replace("/", "-") + ".tar.gz"
        return FileResponse(path, media_type="application/gzip", filename=name)

    # ----------------------------------------------------------------- unsupported

    async def unsupported(self, request: Request) -> Response:
        raise ApiError(404, f"{request.url.path} is not supported by the local tinkjax backend")


def _allow(method: str, *allowed: str) -> None:
    if method not in allowed:
        raise ApiError(405, f"method {method} not allowed here; use {' or '.join(allowed)}")


def _page(request: Request, default_limit: int) -> tuple[int, int]:
    q = request.query_params
    out = []
    for name, default in (("limit", default_limit), ("offset", 0)):
        raw = q.get(name)
        try:
            value = default if raw is None else int(raw)
        except ValueError:
            raise ApiError(400, f"{name}: expected an integer, got {raw!r}", field=name) from None
        if value < 0 or value > 10_000:
            raise ApiError(400, f"{name}: {value} outside [0, 10000]", field=name)
        out.append(value)
    return out[0], out[1]


def _digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


async def _http_exception(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    detail = exc.detail if isinstance(exc, HTTPException) else str(exc)
    message = f"{request.method} {request.url.path}: {detail}"
    return _error(ApiError(status, message))


def build_app(backend: Backend, config: AppConfig) -> Starlette:
    """The ASGI app serving ``backend``."""
    r = _Routes(backend, config)
    post, get = ["POST"], ["GET"]
    routes = [
        ("/api/v1/client/config", r.client_config, post),
        ("/api/v1/client/dynamic_config", r.dynamic_config, post),
        ("/api/v1/create_session", r.create_session, post),
        ("/api/v1/session_heartbeat", r.heartbeat, post),
        ("/api/v1/sessions", r.list_sessions, get),
        ("/api/v1/sessions/{session_id}", r.get_session, get),
        ("/api/v1/sessions/{session_id}/finish", r.finish_session, post),
        ("/api/v1/telemetry", r.telemetry, post),
        ("/api/v1/telemetry/events", r.telemetry_events, get),
        ("/api/v1/healthz", r.healthz, get),
        ("/api/v1/get_server_capabilities", r.capabilities, get),
        ("/api/v1/create_model", r.create_model, post),
        ("/api/v1/get_info", r.get_info, post),
        ("/api/v1/forward_backward", r.forward_backward, post),
        ("/api/v1/forward", r.forward, post),
        ("/api/v1/optim_step", r.optim_step, post),
        ("/api/v1/save_weights", r.save_weights, post),
        ("/api/v1/save_weights_for_sampler", r.save_weights_for_sampler, post),
        ("/api/v1/load_weights", r.load_weights, post),
        ("/api/v1/unload_model", r.unload_model, post),
        ("/api/v1/weights_info", r.weights_info, post),
        ("/api/v1/create_sampling_session", r.create_sampling_session, post),
        ("/api/v1/samplers/{sampler_id:path}", r.get_sampler, get),
        ("/api/v1/asample", r.asample, post),
        ("/api/v1/cancel_future", r.cancel_future, post),
        ("/api/v1/retrieve_future", r.retrieve_future, post),
        ("/api/v1/checkpoints", r.user_checkpoints, get),
        ("/api/v1/training_runs", r.training_runs, get),
        (
            "/api/v1/training_runs/{rest:path}",
            r.training_run_path,
            ["GET", "DELETE", "POST", "PUT"],
        ),
        ("/api/v1/archives/{token}.tar.gz", r.archive, get),
        ("/api/v1/save_weights_external", r.unsupported, post),
        ("/api/v1/copy_weights", r.unsupported, post),
        ("/api/v1/retrieve_futures", r.unsupported, post),
        ("/api/v1/join_sampling_session", r.unsupported, post),
        ("/api/v1/create_custom_loss", r.unsupported, post),
    ]
    app = Starlette(
        routes=[Route(path, _endpoint(fn), methods=methods) for path, fn, methods in routes],
        exception_handlers={HTTPException: _http_exception, Exception: _http_exception},
    )
    app.state.backend = backend
    return app
