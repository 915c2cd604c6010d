"""``ServiceClient``: the session, and the factory of training, sampling and REST clients."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Literal

import httpx

from tinkjax import __version__, events
from tinkjax.errors import APIError, APIStatusError, ConfigurationError, NotFoundError
from tinkjax.types import (
    AdamOptimizerConfig,
    ClientConfigRequest,
    ClientConfigResponse,
    CreateModelRequest,
    CreateModelResponse,
    CreateSamplingSessionRequest,
    CreateSamplingSessionResponse,
    CreateSessionRequest,
    CreateSessionResponse,
    GetServerCapabilitiesResponse,
    LoadWeightsRequest,
    LoadWeightsResponse,
    LoraConfig,
    OptimizerConfig,
    SessionFinishReason,
    SessionFinishRequest,
    SessionHeartbeatRequest,
    UntypedAPIFuture,
)

from ._config import ClientConfig, WireMode, mask_secrets, resolve_config
from ._futures import APIFuture, ClientFuture
from ._loop import submit, warn_if_in_loop
from ._polling import poll_future
from ._transport import Transport, decode_response

if TYPE_CHECKING:
    from ._rest import RestClient
    from ._sampling import SamplingClient, SamplingRetryConfig
    from ._training import TrainingClient

__all__ = ["ServiceClient"]

logger = logging.getLogger("tinkjax.client")

FinishStatus = Literal["success", "errored", "interrupted"]

#: Heartbeat failures are only reported after this long without a successful one.
_HEARTBEAT_GRACE_S = 120.0


class ServiceClient:
    """Entry point: opens a session and creates the other clients.

    Configuration follows argument > environment > default (see
    :func:`tinkjax.client.resolve_config`). With no ``base_url`` and no API key anywhere, or
    with ``base_url="local"``, the embedded local backend is started in this process.

    The session is created in the background as soon as the client exists; the first call
    that needs it waits for it (and raises its error, if creating it failed). Heartbeats are
    sent every ``heartbeat_interval`` seconds; ``close()`` (or leaving a ``with`` block)
    finishes the session.

    Args:
        user_metadata: sent with ``create_session``.
        project_id: the project to bill (``TINKER_PROJECT_ID``).
        display_name: a name for the session.
        base_url: service root (``TINKER_BASE_URL``), or ``"local"``.
        api_key: the API key (``TINKER_API_KEY``).
        tags: session tags (``TINKER_TAGS``, comma-separated).
        timeout: HTTP read timeout, seconds (60).
        max_retries: transport retries per HTTP call (10).
        wire_mode: ``"protobuf"`` (default) or ``"json"`` for JSON-era servers.
        heartbeat_interval: seconds between session heartbeats (10).
        http_transport: an ``httpx.AsyncBaseTransport`` replacing the network (tests).
    """

    def __init__(
        self,
        user_metadata: Mapping[str, str] | None = None,
        project_id: str | None = None,
        *,
        display_name: str | None = None,
        base_url: str | None = None,
        api_key: str | None = None,
        tags: list[str] | None = None,
        timeout: float | None = None,
        max_retries: int | None = None,
        wire_mode: WireMode | None = None,
        heartbeat_interval: float = 10.0,
        http_transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.config: ClientConfig = resolve_config(
            api_key=api_key,
            base_url=base_url,
            timeout=timeout,
            max_retries=max_retries,
            project_id=project_id,
            tags=tags,
            user_metadata=user_metadata,
            wire_mode=wire_mode,
        )
        self._display_name = display_name
        self._heartbeat_interval = heartbeat_interval
        self.transport = Transport(self.config, http_transport=http_transport)
        self.server_config = ClientConfigResponse()
        self._lock = threading.Lock()
        self._model_seq = 0
        self._sampling_seq = 0
        self._closed = False
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._session_future: concurrent.futures.Future[str] = submit(self._start_session())

    def __repr__(self) -> str:
        sid = self.session_id_if_ready
        return f"ServiceClient(base_url={self.config.base_url!r}, session_id={sid!r})"

    # ---------------------------------------------------------------- session
    @property
    def session_id_if_ready(self) -> str | None:
        """The session id once the session exists, else ``None``."""
        f = self._session_future
        if f.done() and not f.cancelled() and f.exception() is None:
            return f.result()
        return None

    @property
    def session_id(self) -> str:
        """The session id (waits for the session to be created)."""
        if not self._session_future.done():
            warn_if_in_loop("ServiceClient.session_id", "`await service._get_session_id()`")
        return self._session_future.result()

    async def _get_session_id(self) -> str:
        if self._closed:
            raise RuntimeError("ServiceClient is closed")
        return await asyncio.wrap_future(self._session_future)

    async def _start_session(self) -> str:
        t = self.transport
        try:
            resp = await t.request(
                "POST", "/api/v1/client/config", json=ClientConfigRequest(sdk_version=__version__)
            )
            self.server_config = decode_response(resp, ClientConfigResponse)
        except NotFoundError:
            logger.debug("server has no /client/config; using the default feature flags")
        cfg = self.config
        request = CreateSessionRequest(
            tags=list(cfg.tags),
            user_metadata=dict(cfg.user_metadata or {}),
            sdk_version=__version__,
            project_id=cfg.project_id,
            display_name=self._display_name,
        )
        resp = await t.request("POST", "/api/v1/create_session", json=request)
        session = decode_response(resp, CreateSessionResponse)
        for level, message in (
            (logging.INFO, session.info_message),
            (logging.WARNING, session.warning_message),
            (logging.ERROR, session.error_message),
        ):
            if message:
                logger.log(level, "%s", message)
        if self._heartbeat_interval > 0 and not self._closed:
            self._heartbeat_task = asyncio.get_running_loop().create_task(
                self._heartbeat(session.session_id)
            )
        return session.session_id

    async def _heartbeat(self, session_id: str) -> None:
        last_ok = time.monotonic()
        reported = False
        while True:
            await asyncio.sleep(self._heartbeat_interval)
            try:
                await self.transport.request(
                    "POST",
                    "/api/v1/session_heartbeat",
                    json=SessionHeartbeatRequest(session_id=session_id),
                    max_retries=0,
                    timeout=10.0,
                    ids={"session_id": session_id},
                )
            except APIStatusError as exc:
                if exc.status_code == 410:
                    logger.warning("session %s expired on the server; heartbeats stop", session_id)
                    return
                reported = self._heartbeat_failed(session_id, last_ok, exc, reported)
            except APIError as exc:
                reported = self._heartbeat_failed(session_id, last_ok, exc, reported)
            else:
                last_ok = time.monotonic()
                reported = False

    @staticmethod
    def _heartbeat_failed(session_id: str, last_ok: float, exc: Exception, reported: bool) -> bool:
        since = time.monotonic() - last_ok
        if since < _HEARTBEAT_GRACE_S or reported:
            return reported
        logger.warning(
            "no successful heartbeat for session %s in %.0f s: %s", session_id, since, exc
        )
        events.emit(
            ("tinkjax", "session", "heartbeat_failed"),
            {"since_success_s": since},
            {"session_id": session_id},
        )
        return True

    def _next_model_seq(self) -> int:
        with self._lock:
            seq = self._model_seq
            self._model_seq += 1
            return seq

    def _next_sampling_seq(self) -> int:
        with self._lock:
            seq = self._sampling_seq
            self._sampling_seq += 1
            return seq

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("ServiceClient is closed")

    # ---------------------------------------------------------------- close
    def close(self, status: FinishStatus = "success", detail: str | None = None) -> None:
        """Finish the session (``/sessions/{id}/finish``), stop heartbeats, close connections.

        Raises:
            NotFoundError: the server does not know the session.
        """
        if self._closed:
            return
        warn_if_in_loop("ServiceClient.close()", "`await service.close_async()`")
        submit(self.close_async(status, detail)).result()

    async def close_async(
        self, status: FinishStatus = "success", detail: str | None = None
    ) -> None:
        """Async twin of :meth:`close`."""
        if self._closed:
            return
        if asyncio.get_running_loop() is not _client_loop():
            await APIFuture(submit(self.close_async(status, detail)))
            return
        self._closed = True
        if self._heartbeat_task is not None:
            self._heartbeat_task.cancel()
        try:
            try:
                session_id = await asyncio.wrap_future(self._session_future)
            except Exception:
                return  # no session was created: nothing to finish
            await self.transport.request(
                "POST",
                f"/api/v1/sessions/{session_id}/finish",
                json=SessionFinishRequest(reason=SessionFinishReason(type=status), detail=detail),
                ids={"session_id": session_id},
            )
        finally:
            await self.transport.aclose()

    def __enter__(self) -> ServiceClient:
        self._check_open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close(*_finish_status(exc_type, exc))

    async def __aenter__(self) -> ServiceClient:
        self._check_open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close_async(*_finish_status(exc_type, exc))

    # ---------------------------------------------------------------- factories
    def create_lora_training_client(
        self,
        base_model: str,
        rank: int = 32,
        seed: int | None = None,
        train_mlp: bool = True,
        train_attn: bool = True,
        train_unembed: bool = True,
        user_metadata: dict[str, str] | None = None,
        optimizer: OptimizerConfig | None = None,
    ) -> ClientFuture[TrainingClient]:
        """Create a LoRA adapter on ``base_model`` and a ``TrainingClient`` for it.

        Raises:
            ConfigurationError: every ``train_*`` flag is false, or ``rank`` < 1.
        """
        self._check_open()
        if not (train_mlp or train_attn or train_unembed):
            raise ConfigurationError(
                "at least one of train_mlp, train_attn, train_unembed must be True"
            )
        if rank < 1:
            raise ConfigurationError(f"rank must be >= 1, got {rank}")
        lora = LoraConfig(
            rank=rank,
            seed=seed,
            train_unembed=train_unembed,
            train_mlp=train_mlp,
            train_attn=train_attn,
        )
        return ClientFuture(submit(self._create_lora(base_model, lora, user_metadata, optimizer)))

    async def create_lora_training_client_async(
        self,
        base_model: str,
        rank: int = 32,
        seed: int | None = None,
        train_mlp: bool = True,
        train_attn: bool = True,
        train_unembed: bool = True,
        user_metadata: dict[str, str] | None = None,
        optimizer: OptimizerConfig | None = None,
    ) -> TrainingClient:
        """Async twin of :meth:`create_lora_training_client` (returns the client)."""
        return await self.create_lora_training_client(
            base_model, rank, seed, train_mlp, train_attn, train_unembed, user_metadata, optimizer
        )

    async def _create_lora(
        self,
        base_model: str,
        lora: LoraConfig,
        user_metadata: dict[str, str] | None,
        optimizer: OptimizerConfig | None,
    ) -> TrainingClient:
        session_id = await self._get_session_id()
        seq = self._next_model_seq()
        request = CreateModelRequest(
            session_id=session_id,
            model_seq_id=seq,
            base_model=base_model,
            user_metadata=user_metadata,
            lora_config=lora,
            optimizer_config=optimizer or AdamOptimizerConfig(),
        )
        ids = {"session_id": session_id}
        resp = await self.transport.request("POST", "/api/v1/create_model", json=request, ids=ids)
        ack = decode_response(resp, UntypedAPIFuture)
        created = await poll_future(
            self.transport,
            ack.request_id,
            CreateModelResponse,
            request_type="CreateModel",
            ids=ids,
        )
        return await self._training_client(created.model_id)

    async def _training_client(self, model_id: str) -> TrainingClient:
        from ._training import TrainingClient

        tc = TrainingClient(self, model_id)
        await tc._fetch_info()
        return tc

    def create_training_client_from_state(
        self,
        path: str,
        base_model: str | None = None,
        user_metadata: dict[str, str] | None = None,
        weights_access_token: str | None = None,
        optimizer: OptimizerConfig | None = None,
    ) -> ClientFuture[TrainingClient]:
        """A new model initialised from the checkpoint ``path`` (weights only, fresh optimizer)."""
        self._check_open()
        return ClientFuture(
            submit(
                self._create_from_state(
                    path, False, base_model, user_metadata, weights_access_token, optimizer
                )
            )
        )

    async def create_training_client_from_state_async(
        self,
        path: str,
        base_model: str | None = None,
        user_metadata: dict[str, str] | None = None,
        weights_access_token: str | None = None,
        optimizer: OptimizerConfig | None = None,
    ) -> TrainingClient:
        """Async twin of :meth:`create_training_client_from_state`."""
        return await self.create_training_client_from_state(
            path, base_model, user_metadata, weights_access_token, optimizer
        )

    def create_training_client_from_state_with_optimizer(
        self,
        path: str,
        base_model: str | None = None,
        user_metadata: dict[str, str] | None = None,
        weights_access_token: str | None = None,
        optimizer: OptimizerConfig | None = None,
    ) -> ClientFuture[TrainingClient]:
        """A new model resuming the checkpoint ``path`` with its optimizer state."""
        self._check_open()
        return ClientFuture(
            submit(
                self._create_from_state(
                    path, True, base_model, user_metadata, weights_access_token, optimizer
                )
            )
        )

    async def create_training_client_from_state_with_optimizer_async(
        self,
        path: str,
        base_model: str | None = None,
        user_metadata: dict[str, str] | None = None,
        weights_access_token: str | None = None,
        optimizer: OptimizerConfig | None = None,
    ) -> TrainingClient:
        """Async twin of :meth:`create_training_client_from_state_with_optimizer`."""
        return await self.create_training_client_from_state_with_optimizer(
            path, base_model, user_metadata, weights_access_token, optimizer
        )

    async def _create_from_state(
        self,
        path: str,
        with_optimizer: bool,
        base_model: str | None,
        user_metadata: dict[str, str] | None,
        weights_access_token: str | None,
        optimizer: OptimizerConfig | None,
    ) -> TrainingClient:
        from tinkjax.types import parse_tinker_path

        parse_tinker_path(path)  # fail early, naming the path
        session_id = await self._get_session_id()
        seq = self._next_model_seq()
        request = LoadWeightsRequest(
            path=path,
            optimizer=with_optimizer,
            session_id=session_id,
            model_seq_id=seq,
            base_model=base_model,
            user_metadata=user_metadata,
            optimizer_config=optimizer,
            weights_access_token=weights_access_token,
        )
        ids = {"session_id": session_id}
        resp = await self.transport.request("POST", "/api/v1/load_weights", json=request, ids=ids)
        ack = decode_response(resp, UntypedAPIFuture)
        loaded = await poll_future(
            self.transport,
            ack.request_id,
            LoadWeightsResponse,
            request_type="LoadWeights",
            ids=ids,
        )
        return await self._training_client(loaded.model_id or f"{session_id}:train:{seq}")

    def create_sampling_client(
        self,
        model_path: str | None = None,
        base_model: str | None = None,
        retry_config: SamplingRetryConfig | None = None,
        record_stability_info: bool = False,
    ) -> ClientFuture[SamplingClient]:
        """A ``SamplingClient`` for saved sampler weights (``model_path``) or a base model.

        Raises:
            ConfigurationError: neither or both of ``model_path`` and ``base_model`` given, or
                ``model_path`` is not a ``tinker://`` path.
        """
        self._check_open()
        if (model_path is None) == (base_model is None):
            raise ConfigurationError("pass exactly one of model_path and base_model")
        if model_path is not None and not model_path.startswith("tinker://"):
            raise ConfigurationError(f"model_path {model_path!r} must start with 'tinker://'")
        return ClientFuture(
            submit(
                self._create_sampling(model_path, base_model, retry_config, record_stability_info)
            )
        )

    async def create_sampling_client_async(
        self,
        model_path: str | None = None,
        base_model: str | None = None,
        retry_config: SamplingRetryConfig | None = None,
        record_stability_info: bool = False,
    ) -> SamplingClient:
        """Async twin of :meth:`create_sampling_client`."""
        return await self.create_sampling_client(
            model_path, base_model, retry_config, record_stability_info
        )

    async def _create_sampling(
        self,
        model_path: str | None,
        base_model: str | None,
        retry_config: SamplingRetryConfig | None,
        record_stability_info: bool,
    ) -> SamplingClient:
        from ._sampling import SamplingClient

        session_id = await self._get_session_id()
        request = CreateSamplingSessionRequest(
            session_id=session_id,
            sampling_session_seq_id=self._next_sampling_seq(),
            base_model=base_model,
            model_path=model_path,
        )
        resp = await self.transport.request(
            "POST",
            "/api/v1/create_sampling_session",
            json=request,
            ids={"session_id": session_id},
        )
        created = decode_response(resp, CreateSamplingSessionResponse)
        return SamplingClient(
            self,
            created.sampling_session_id,
            base_model=base_model,
            model_path=model_path,
            retry_config=retry_config,
            record_stability_info=record_stability_info,
        )

    def create_rest_client(self) -> RestClient:
        """A ``RestClient`` sharing this client's configuration and connections."""
        from ._rest import RestClient

        self._check_open()
        return RestClient._from_transport(self.transport)

    def get_server_capabilities(self) -> GetServerCapabilitiesResponse:
        """The models the server supports (blocks; see :meth:`get_server_capabilities_async`)."""
        warn_if_in_loop(
            "ServiceClient.get_server_capabilities()",
            "`await service.get_server_capabilities_async()`",
        )
        return self.create_rest_client().get_server_capabilities().result()

    async def get_server_capabilities_async(self) -> GetServerCapabilitiesResponse:
        """Async twin of :meth:`get_server_capabilities`."""
        return await self.create_rest_client().get_server_capabilities()


def _client_loop() -> asyncio.AbstractEventLoop:
    from ._loop import get_loop

    return get_loop()


def _finish_status(
    exc_type: type[BaseException] | None, exc: BaseException | None
) -> tuple[FinishStatus, str | None]:
    if exc_type is None:
        return "success", None
    if issubclass(exc_type, Exception):
        return "errored", mask_secrets(f"{exc_type.__name__}: {exc}")[:1000]
    return "interrupted", exc_type.__name__
