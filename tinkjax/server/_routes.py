"""The routes of the Tinker protocol, declared as a table.

Most endpoints have one of two shapes, so they are rows, not handlers:

* :class:`Post` — decode the JSON body as ``request`` and answer ``call(req, **path_params)``
  (``call(req, digest, ...)`` for ordered requests, whose body hash detects duplicates; when
  one is refused, its ``seq_id`` still counts as used: ``Scheduler.refuse``);
* :class:`Get` — answer ``call(query, **path_params)``.

Both run ``call`` on a worker thread (``run_in_threadpool``): decoding large bodies and every
SQLite statement stay off the event loop. The few endpoints of their own shape (protobuf
``forward_backward``, the ``retrieve_future`` long-poll, telemetry intake, the checkpoint REST
resources) are :class:`Raw` rows. Path parameters may contain ``:`` (model ids) and ``/``
(checkpoint ids).

Every row but the ``public`` ones (``/healthz``, and archive and file downloads, whose signed
token is the credential) runs for an authenticated tenant (``request.state.tenant``, see ``_app``): before the
backend sees a request, :class:`~tinkjax.server._tenants.Tenancy` answers 404 for every id in it
that is not the tenant's, and the future an answer names is claimed for the tenant. A row with
``tenant=True`` also hands its call the tenant (creating a session, listing, telemetry).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from tinkjax.codec import (
    decode_forward_backward_request,
    decode_json,
    encode_forward_backward_output,
    encode_json,
    encode_sample_response,
)
from tinkjax.server._auth import ArchiveTokens, KeyPolicy
from tinkjax.server._backend import Backend
from tinkjax.server._errors import ApiError, describe, status_of
from tinkjax.server._http import Handler, digest, json_response, page, read_body, read_json_body
from tinkjax.server._models_registry import no_checkpoint
from tinkjax.server._rest import CheckpointRoutes
from tinkjax.server._store import UnknownCheckpointError
from tinkjax.server._tenants import Tenancy
from tinkjax.server._validate import check_user_metadata
from tinkjax.types import (
    ClientConfigResponse,
    ClientDynamicConfigResponse,
    CreateCustomLossRequest,
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
    SaveWeightsExternalRequest,
    SaveWeightsForSamplerRequest,
    SaveWeightsRequest,
    SessionFinishRequest,
    SessionHeartbeatRequest,
    SessionHeartbeatResponse,
    TryAgainResponse,
    UnloadModelRequest,
    WeightsInfoRequest,
    WeightsInfoResponse,
)

__all__ = ["PROTOBUF", "Get", "Post", "Raw", "Route", "route_table"]

PROTOBUF = "application/x-protobuf"
_Query = Mapping[str, str]


@dataclass(frozen=True)
class Post:
    """``POST path``: a JSON body decoded as ``request``, answered by ``call``."""

    path: str
    request: Any
    call: Callable[..., Any]
    digest: bool = False
    refused: Callable[[str, bytes, str, BaseException], None] | None = None
    """Called when an ordered request is refused (tenant, body, digest, error)."""
    tenant: bool = False


@dataclass(frozen=True)
class Get:
    """``GET path``: answered by ``call(query, **path_params)`` (``tenant=`` too with
    ``tenant``); ``public`` rows need no key."""

    path: str
    call: Callable[..., Any]
    tenant: bool = False
    public: bool = False


@dataclass(frozen=True)
class Raw:
    """An endpoint with its own handler (``public``: it needs no key)."""

    path: str
    methods: tuple[str, ...]
    handler: Handler
    public: bool = False


Route = Post | Get | Raw


def _owned_call(
    tenancy: Tenancy,
    request: Request,
    route: Post | Get,
    req: Any,
    *args: Any,
) -> Any:
    """``route.call(*args)`` once every id of the request is the tenant's (worker thread)."""
    tenant: str = request.state.tenant
    params = dict(request.path_params)
    tenancy.path_params(tenant, params)
    tenancy.request(tenant, req)
    if route.tenant:
        params["tenant"] = tenant
    answer = route.call(*args, **params)
    tenancy.claim(tenant, answer)
    return answer


def post_handler(route: Post, max_body_bytes: int, tenancy: Tenancy) -> Handler:
    """The handler of a :class:`Post` row."""

    async def handler(request: Request) -> Response:
        body = await read_json_body(request, max_body_bytes)
        try:
            req = await run_in_threadpool(decode_json, body, route.request)
            args = (req, digest(body)) if route.digest else (req,)
            answer = await run_in_threadpool(_owned_call, tenancy, request, route, req, *args)
        except Exception as exc:
            if route.refused is not None:
                await run_in_threadpool(
                    route.refused, request.state.tenant, body, digest(body), exc
                )
            raise
        return json_response(answer)

    return handler


def get_handler(route: Get, tenancy: Tenancy) -> Handler:
    """The handler of a :class:`Get` row."""

    async def handler(request: Request) -> Response:
        query = dict(request.query_params)
        if route.public:
            return json_response(await run_in_threadpool(route.call, query))
        return json_response(
            await run_in_threadpool(_owned_call, tenancy, request, route, None, query)
        )

    return handler


class _OrderHead(msgspec.Struct):
    """The ordering fields of any ordered JSON body (everything else ignored)."""

    model_id: Any = None
    seq_id: Any = None


_head_decoder = msgspec.json.Decoder(_OrderHead)


class _Handlers:
    """The endpoints that are not a plain :class:`Post` or :class:`Get`."""

    def __init__(
        self, backend: Backend, tenancy: Tenancy, *, max_body_bytes: int, long_poll_s: float
    ) -> None:
        self.backend = backend
        self.tenancy = tenancy
        self.max_body_bytes = max_body_bytes
        self.long_poll_s = long_poll_s

    def refused(
        self, tenant: str, body: bytes, body_digest: str, exc: BaseException, head: Any = None
    ) -> None:
        """A refused ordered request uses its ``seq_id`` when its model and seq id can be read
        (from ``head``, the decoded request, or else from the JSON body) and the model is the
        ``tenant``'s: a request naming another tenant's model never touches its order.

        Not when the server is at fault (5xx), nor when the caller may not use the model (401,
        403, or a 404 for the ``model_id`` itself): a request must never use up an id of a
        model that is not its own."""
        status = status_of(exc)
        if status >= 500 or status in (401, 403):
            return
        if status == 404 and getattr(exc, "field", None) == "model_id":
            return
        if head is None:
            try:
                head = _head_decoder.decode(body)
            except msgspec.MsgspecError:
                return
        model_id, seq_id = getattr(head, "model_id", None), getattr(head, "seq_id", None)
        if (
            isinstance(model_id, str)
            and type(seq_id) is int
            and seq_id >= 0
            and self.tenancy.model_owner(model_id) == tenant
        ):
            self.backend.scheduler.refuse(model_id, seq_id, body_digest, describe(exc))

    def create_session(self, req: CreateSessionRequest, *, tenant: str) -> CreateSessionResponse:
        check_user_metadata(req.user_metadata)
        session_id = str(uuid.uuid4())
        self.backend.store.sessions.add(
            session_id, tags=req.tags, user_metadata=req.user_metadata,
            sdk_version=req.sdk_version, display_name=req.display_name, tenant=tenant,
        )  # fmt: skip
        return CreateSessionResponse(session_id=session_id)

    def heartbeat(self, req: SessionHeartbeatRequest) -> SessionHeartbeatResponse:
        self.backend.store.sessions.heartbeat(req.session_id)
        return SessionHeartbeatResponse()

    def finish_session(self, req: SessionFinishRequest, session_id: str) -> dict[str, Any]:
        self.backend.store.sessions.finish(session_id, reason=req.reason.type, detail=req.detail)
        self.backend.end_session(session_id)  # frees its models and samplers' weights
        return {}

    def weights_info(self, req: WeightsInfoRequest) -> WeightsInfoResponse:
        try:
            return self.backend.store.checkpoints.weights_info(req.tinker_path)
        except UnknownCheckpointError:
            raise no_checkpoint(req.tinker_path, "tinker_path") from None

    def telemetry(self, raw: dict[str, Any], *, tenant: str) -> dict[str, Any]:
        """Events are kept as the poster's (a session id of another tenant is not checked:
        answering differently would tell it exists; its owner never sees the events)."""
        events = raw.get("events")
        if not isinstance(events, list):
            raise ApiError(400, "events: expected a list of event objects", field="events")
        session_id = raw.get("session_id")
        if session_id is not None and not isinstance(session_id, str):
            raise ApiError(400, f"session_id: expected a string, got {session_id!r}")
        for i, event in enumerate(events):
            if not isinstance(event, dict):
                raise ApiError(400, f"events[{i}]: expected an object, got {event!r}")
        self.backend.store.telemetry.add(session_id, events, tenant=tenant)
        return {"status": "accepted"}

    def telemetry_events(self, query: _Query, *, tenant: str) -> dict[str, Any]:
        limit, _ = page(query, 100)
        events = self.backend.store.telemetry.query(
            session_id=query.get("session_id"), event_name=query.get("event_name"), limit=limit,
            tenant=tenant,
        )  # fmt: skip
        return {"events": events}

    async def forward_backward(self, request: Request) -> Response:
        """``/forward_backward``: a protobuf body (the current SDK) or JSON (older ones)."""
        body = await read_body(request, self.max_body_bytes)
        content_type = request.headers.get("content-type", "").lower()
        protobuf = "protobuf" in content_type or "octet-stream" in content_type
        req: ForwardBackwardRequest | ForwardRequest | None = None
        try:
            if protobuf:
                req = await run_in_threadpool(decode_forward_backward_request, body)
            else:
                if not body.strip():
                    raise ApiError(400, "empty request body")
                req = await run_in_threadpool(decode_json, body, ForwardBackwardRequest)
            answer = await run_in_threadpool(
                self._forward_backward, request.state.tenant, req, body
            )
        except Exception as exc:
            # A protobuf body that did not decode has no seq id to read.
            if req is not None or not protobuf:
                await run_in_threadpool(
                    self.refused, request.state.tenant, body, digest(body), exc, req
                )
            raise
        return json_response(answer)

    def _forward_backward(
        self, tenant: str, req: ForwardBackwardRequest | ForwardRequest, body: bytes
    ) -> Any:
        """The tenant's ``forward_backward`` (worker thread)."""
        self.tenancy.request(tenant, req)
        answer = self.backend.training.forward_backward(req, digest(body))
        self.tenancy.claim(tenant, answer)
        return answer

    async def retrieve_future(self, request: Request) -> Response:
        """The long-poll: the result once done, 408 ``try_again`` while still pending."""
        body = await read_json_body(request, self.max_body_bytes)
        req = decode_json(body, FutureRetrieveRequest)
        record = None
        if self.tenancy.future(request.state.tenant, req.request_id):
            record = await self.backend.futures.wait(req.request_id, self.long_poll_s)
        if record is None:
            raise ApiError(
                404, f"request_id: unknown request {req.request_id!r}", field="request_id"
            )
        if record.state == "pending":
            return json_response(
                TryAgainResponse(request_id=req.request_id, queue_state="active"), 408
            )
        if record.state == "failed":
            return json_response(
                RequestFailedResponse(error=record.error or "failed", category=record.category)  # type: ignore[arg-type]
            )
        result = record.result
        if PROTOBUF in request.headers.get("accept", ""):
            if isinstance(result, ForwardBackwardOutput):
                data = await run_in_threadpool(encode_forward_backward_output, result)
                return Response(data, media_type=PROTOBUF)
            if isinstance(result, SampleResponse):
                data = await run_in_threadpool(encode_sample_response, result)
                return Response(data, media_type=PROTOBUF)
        data = await run_in_threadpool(encode_json, result)
        return Response(data, media_type="application/json")

    async def unsupported(self, request: Request) -> Response:
        raise ApiError(404, f"{request.url.path} is not supported by the local tinkjax backend")


def _paged(path: str, default_limit: int, call: Callable[..., Any]) -> Get:
    """``GET path``: a listing of the tenant's objects (``?limit=&offset=``)."""

    def answer(query: _Query, *, tenant: str) -> Any:
        limit, offset = page(query, default_limit)
        return call(limit=limit, offset=offset, tenant=tenant)

    return Get(path, answer, tenant=True)


def route_table(
    backend: Backend,
    *,
    max_body_bytes: int,
    long_poll_s: float,
    policy: KeyPolicy | None = None,
    archive_tokens: ArchiveTokens | None = None,
) -> list[Route]:
    """Every route of the app, in matching order (``policy``: the keys an archive download
    may send, any by default; ``archive_tokens``: signs download links, a fresh secret by
    default)."""
    tenancy = backend.tenancy
    h = _Handlers(backend, tenancy, max_body_bytes=max_body_bytes, long_poll_s=long_poll_s)
    rest = CheckpointRoutes(
        backend.store, tenancy, policy=policy or KeyPolicy(),
        tokens=archive_tokens or ArchiveTokens(), max_body_bytes=max_body_bytes,
        models=backend.models,
    )  # fmt: skip
    store, models, samplers = backend.store, backend.models, backend.samplers

    def ordered(path: str, request: Any, call: Callable[..., Any]) -> Post:
        return Post(path, request, call, digest=True, refused=h.refused)

    training, lifecycle, checkpoints = backend.training, backend.lifecycle, backend.checkpoints
    api = "/api/v1"
    unsupported = [
        "retrieve_futures", "join_sampling_session",
    ]  # fmt: skip
    return [
        # session
        Post(f"{api}/client/config", dict[str, Any],
             lambda _: ClientConfigResponse(custom_loss_server_side=True)),
        Post(f"{api}/client/dynamic_config", dict[str, Any],
             lambda _: ClientDynamicConfigResponse()),
        Post(f"{api}/create_session", CreateSessionRequest, h.create_session, tenant=True),
        Post(f"{api}/session_heartbeat", SessionHeartbeatRequest, h.heartbeat),
        _paged(f"{api}/sessions", 20, store.sessions.page),
        Get(f"{api}/sessions/{{session_id}}", lambda _, session_id: store.sessions.get(session_id)),
        Post(f"{api}/sessions/{{session_id}}/finish", SessionFinishRequest, h.finish_session),
        Post(f"{api}/telemetry", dict[str, Any], h.telemetry, tenant=True),
        Get(f"{api}/telemetry/events", h.telemetry_events, tenant=True),
        Get(f"{api}/healthz", lambda _: {"status": "ok"}, public=True),
        Get(f"{api}/get_server_capabilities",
            lambda _: GetServerCapabilitiesResponse(supported_models=models.capabilities())),
        # models and training
        ordered(f"{api}/create_model", CreateModelRequest, lifecycle.create_model),
        Post(f"{api}/get_info", GetInfoRequest, lambda req: models.get_info(req.model_id)),
        Raw(f"{api}/forward_backward", ("POST",), h.forward_backward),
        ordered(f"{api}/forward", ForwardRequest, training.forward_backward),
        ordered(f"{api}/optim_step", OptimStepRequest, training.optim_step),
        ordered(f"{api}/save_weights", SaveWeightsRequest, checkpoints.save_weights),
        ordered(f"{api}/save_weights_for_sampler", SaveWeightsForSamplerRequest,
                checkpoints.save_weights_for_sampler),
        ordered(f"{api}/save_weights_external", SaveWeightsExternalRequest,
                checkpoints.save_weights_external),
        ordered(f"{api}/load_weights", LoadWeightsRequest, lifecycle.load_weights),
        Raw(f"{api}/copy_weights", ("POST",), rest.copy_weights),
        Post(f"{api}/unload_model", UnloadModelRequest, lifecycle.unload_model),
        Post(f"{api}/weights_info", WeightsInfoRequest, h.weights_info),
        Post(f"{api}/create_custom_loss", CreateCustomLossRequest, backend.custom_losses.create),
        # sampling
        Post(f"{api}/create_sampling_session", CreateSamplingSessionRequest,
             backend.sampling.create_sampling_session),
        Get(f"{api}/samplers/{{sampler_id:path}}", lambda _, sampler_id: samplers.get(sampler_id)),
        Post(f"{api}/asample", SampleRequest, backend.sampling.sample),
        Post(f"{api}/cancel_future", dict[str, Any], lambda _: {}),
        # futures
        Raw(f"{api}/retrieve_future", ("POST",), h.retrieve_future),
        # REST
        _paged(f"{api}/checkpoints", 100, store.checkpoints.page),
        _paged(f"{api}/training_runs", 20, store.runs.page),
        Raw(f"{api}/training_runs/{{rest:path}}", ("GET", "DELETE", "POST", "PUT"),
            rest.training_run_path),
        Raw(f"{api}/archives/{{token}}.tar.gz", ("GET",), rest.archive, public=True),
        Raw(f"{api}/downloads/{{token}}/{{file:path}}", ("GET",), rest.download, public=True),
        *(Raw(f"{api}/{name}", ("POST",), h.unsupported) for name in unsupported),
    ]  # fmt: skip
