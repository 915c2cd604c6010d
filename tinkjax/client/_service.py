"""``ServiceClient``: the session, and the factory of training, sampling and REST clients."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any

import httpx

from tinkjax.codec import WireMode
from tinkjax.errors import ConfigurationError
from tinkjax.types import (
    AdamOptimizerConfig,
    ClientConfigResponse,
    CreateModelRequest,
    CreateModelResponse,
    GetServerCapabilitiesResponse,
    LoadWeightsRequest,
    LoadWeightsResponse,
    LoraConfig,
    OptimizerConfig,
    UntypedAPIFuture,
    parse_tinker_path,
)

from ._config import ClientConfig, mask_secrets, resolve_config
from ._embedded import start_embedded
from ._futures import APIFuture, ClientFuture
from ._loop import get_loop, submit, warn_if_in_loop
from ._loss_handle import LossHandle, trace_custom_loss, upload_custom_loss
from ._rest import RestClient
from ._sampling import (
    SamplingClient,
    SamplingRetryConfig,
    check_sampling_source,
    create_sampling_client,
)
from ._session import FinishStatus, SessionContext
from ._telemetry import TelemetryReporter, telemetry_enabled
from ._training import TrainingClient, open_training_client
from ._transport import Transport, decode_response
from ._twins import awaiting, blocking

__all__ = ["ServiceClient"]

logger = logging.getLogger("tinkjax.client")


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

    Attributes:
        config: the resolved configuration.
        transport: the HTTP choke point every client of the session shares.
        session: the :class:`~._session.SessionContext` handed to the clients it creates.
        telemetry_reporter: the session's :class:`~._telemetry.TelemetryReporter`, started
            with the client (``None`` when ``TINKER_TELEMETRY`` is off, e.g. ``0``, as the
            official SDK reads it); :meth:`close` stops it.
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
        config = resolve_config(
            api_key=api_key,
            base_url=base_url,
            timeout=timeout,
            max_retries=max_retries,
            project_id=project_id,
            tags=tags,
            user_metadata=user_metadata,
            wire_mode=wire_mode,
        )
        self.config: ClientConfig = start_embedded(config)
        self.transport = Transport(self.config, http_transport=http_transport)
        self.session = SessionContext(
            self.config,
            self.transport,
            display_name=display_name,
            heartbeat_interval=heartbeat_interval,
        )
        self.telemetry_reporter: TelemetryReporter | None = None
        if telemetry_enabled():
            try:
                self.telemetry_reporter = TelemetryReporter(self.transport, self.session)
            except Exception as exc:  # telemetry never stops a client from starting
                logger.warning("telemetry reporter not started: %s", exc)
        self.session.telemetry = self.telemetry_reporter

    def get_telemetry(self) -> TelemetryReporter | None:
        """The session's telemetry reporter (the official SDK's name for
        :attr:`telemetry_reporter`); ``None`` when telemetry is off."""
        return self.telemetry_reporter

    def __repr__(self) -> str:
        sid = self.session_id_if_ready
        return f"ServiceClient(base_url={self.config.base_url!r}, session_id={sid!r})"

    # ---------------------------------------------------------------- session
    @property
    def session_id_if_ready(self) -> str | None:
        """The session id once the session exists, else ``None``."""
        return self.session.session_id_if_ready

    @property
    def session_id(self) -> str:
        """The session id (waits for the session to be created)."""
        return self.session.session_id()

    @property
    def server_config(self) -> ClientConfigResponse:
        """The server's feature flags and limits (``/client/config``)."""
        return self.session.server_config

    # ---------------------------------------------------------------- close
    def close(self, status: FinishStatus = "success", detail: str | None = None) -> None:
        """Finish the session (``/sessions/{id}/finish``), stop heartbeats, close connections.

        Never raises for the server's sake: a session the server cannot finish (it is gone,
        or no longer knows the session) is logged as a warning, so leaving a ``with`` block
        never replaces the body's own exception.
        """
        if self.session.closed:
            return
        warn_if_in_loop("ServiceClient.close()", "`await service.close_async()`")
        submit(self.close_async(status, detail)).result()

    async def close_async(
        self, status: FinishStatus = "success", detail: str | None = None
    ) -> None:
        """Async twin of :meth:`close`."""
        if self.session.closed:
            return
        if asyncio.get_running_loop() is not get_loop():
            await APIFuture(submit(self.close_async(status, detail)))
            return
        if self.telemetry_reporter is not None and not self.session.closed:
            try:  # SESSION_END and the last batch go out while the transport is open
                await self.telemetry_reporter.stop_async()
            except Exception as exc:
                logger.warning("stopping telemetry failed: %s", exc)
        await self.session.close(status, detail)

    def __enter__(self) -> ServiceClient:
        self.session.check_open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close(*_finish_status(exc_type, exc))

    async def __aenter__(self) -> ServiceClient:
        self.session.check_open()
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
        self.session.check_open()
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

    create_lora_training_client_async = awaiting(create_lora_training_client)

    async def _create_lora(
        self,
        base_model: str,
        lora: LoraConfig,
        user_metadata: dict[str, str] | None,
        optimizer: OptimizerConfig | None,
    ) -> TrainingClient:
        session_id = await self.session.get_session_id()
        seq = self.session.next_model_seq()
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
        created = await self.session.poll(
            ack.request_id,
            CreateModelResponse,
            request_type="CreateModel",
            ids=ids,
        )
        return await open_training_client(self.session, created.model_id)

    def create_training_client_from_state(
        self,
        path: str,
        base_model: str | None = None,
        user_metadata: dict[str, str] | None = None,
        weights_access_token: str | None = None,
        optimizer: OptimizerConfig | None = None,
    ) -> ClientFuture[TrainingClient]:
        """A new model initialised from the checkpoint ``path`` (weights only, fresh optimizer)."""
        self.session.check_open()
        return ClientFuture(
            submit(
                self._create_from_state(
                    path, False, base_model, user_metadata, weights_access_token, optimizer
                )
            )
        )

    create_training_client_from_state_async = awaiting(create_training_client_from_state)

    def create_training_client_from_state_with_optimizer(
        self,
        path: str,
        base_model: str | None = None,
        user_metadata: dict[str, str] | None = None,
        weights_access_token: str | None = None,
        optimizer: OptimizerConfig | None = None,
    ) -> ClientFuture[TrainingClient]:
        """A new model resuming the checkpoint ``path`` with its optimizer state."""
        self.session.check_open()
        return ClientFuture(
            submit(
                self._create_from_state(
                    path, True, base_model, user_metadata, weights_access_token, optimizer
                )
            )
        )

    create_training_client_from_state_with_optimizer_async = awaiting(
        create_training_client_from_state_with_optimizer
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
        parse_tinker_path(path)  # fail early, naming the path
        session_id = await self.session.get_session_id()
        seq = self.session.next_model_seq()
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
        loaded = await self.session.poll(
            ack.request_id,
            LoadWeightsResponse,
            request_type="LoadWeights",
            ids=ids,
        )
        return await open_training_client(
            self.session, loaded.model_id or f"{session_id}:train:{seq}"
        )

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
        self.session.check_open()
        check_sampling_source(model_path, base_model)
        return ClientFuture(
            submit(
                create_sampling_client(
                    self.session,
                    model_path=model_path,
                    base_model=base_model,
                    retry_config=retry_config,
                    record_stability_info=record_stability_info,
                )
            )
        )

    create_sampling_client_async = awaiting(create_sampling_client)

    def copy_weights(
        self,
        path: str,
        *,
        ttl_seconds: int | None = None,
        weights_access_token: str | None = None,
    ) -> APIFuture[str]:
        """Copy a checkpoint (yours or a published one) into a new training run that cannot be
        trained on: in this client's project when it has one (``project_id`` /
        ``TINKER_PROJECT_ID``), else in this client's session. Returns the copy's path (see
        :meth:`RestClient.copy_weights`)."""
        self.session.check_open()
        rest = RestClient.from_transport(self.transport)
        if self.config.project_id is not None:
            return rest.copy_weights(
                path, self.config.project_id, ttl_seconds=ttl_seconds,
                weights_access_token=weights_access_token,
            )  # fmt: skip
        seq = self.session.next_model_seq()

        async def run() -> str:
            session_id = await self.session.get_session_id()
            return await rest.copy_weights_to_run(
                path, session_id, seq, ttl_seconds=ttl_seconds,
                weights_access_token=weights_access_token,
            )  # fmt: skip

        return APIFuture(submit(run()))

    copy_weights_async = awaiting(copy_weights)

    def create_custom_loss(
        self, fn: Callable[..., Any], input_ranks: Mapping[str, int]
    ) -> ClientFuture[LossHandle]:
        """Upload a per-datum torch loss to run inside the server's backward pass.

        ``fn(logprobs, *inputs) -> (loss, metrics)`` runs once per datum and the losses are
        summed: ``logprobs`` has the shape of the datum's ``target_tokens``, each further
        parameter names a ``loss_fn_inputs`` key; ``input_ranks`` gives every parameter's rank
        (0 scalar, 1 ``[T]``, 2 ``[T, K]``). Metrics are scalar tensors keyed
        ``custom/<name>:sum`` or ``:mean``. ``fn`` is traced with ``torch.fx`` (torch needed
        here only) and the server refuses (400, naming the node) any operation outside its
        allow-list (docs/server.md). Pass the handle to ``forward_backward_custom``: one
        server pass, no client-side forward.

        Raises:
            ImportError: torch is not installed.
            ValueError: a bad signature or ``input_ranks``, or ``fn`` cannot be traced.
        """
        self.session.check_open()
        name = getattr(fn, "__name__", type(fn).__name__)
        inputs, graph = trace_custom_loss(fn, input_ranks)  # errors now, before any request
        seq = self.session.next_custom_loss_seq()
        return ClientFuture(submit(upload_custom_loss(self.session, name, inputs, graph, seq)))

    create_custom_loss_async = awaiting(create_custom_loss)

    def create_rest_client(self) -> RestClient:
        """A ``RestClient`` sharing this client's configuration and connections."""
        self.session.check_open()
        rest = RestClient.from_transport(self.transport)
        rest.telemetry = self.telemetry_reporter
        return rest

    async def get_server_capabilities_async(self) -> GetServerCapabilitiesResponse:
        """The models the server supports."""
        return await self.create_rest_client().get_server_capabilities()

    get_server_capabilities = blocking(get_server_capabilities_async)


def _finish_status(
    exc_type: type[BaseException] | None, exc: BaseException | None
) -> tuple[FinishStatus, str | None]:
    if exc_type is None:
        return "success", None
    if issubclass(exc_type, Exception):
        return "errored", mask_secrets(f"{exc_type.__name__}: {exc}")[:1000]
    return "interrupted", exc_type.__name__
