"""``TrainingClient``: forward/backward, optimizer steps and checkpoints of one model.

Ordering: every call reserves its ``seq_id``\\ s when it is made and is submitted in turn by
the model's :class:`~._queue.ModelQueue` (which also fills the gap of a rejected submission
and poisons the client when even that fails).
"""

from __future__ import annotations

from collections.abc import Coroutine, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeVar, Unpack, overload

from tinkjax.errors import APIResponseValidationError, ConfigurationError
from tinkjax.types import (
    AdamParams,
    Datum,
    DimuonParams,
    ForwardBackwardOutput,
    GetInfoRequest,
    GetInfoResponse,
    LoadWeightsRequest,
    LoadWeightsResponse,
    LossFnType,
    OptimParams,
    OptimStepRequest,
    OptimStepResponse,
    SaveWeightsExternalRequest,
    SaveWeightsExternalResponse,
    SaveWeightsForSamplerRequest,
    SaveWeightsForSamplerResponse,
    SaveWeightsForSamplerResponseInternal,
    SaveWeightsRequest,
    SaveWeightsResponse,
)

from ._chunking import combine_outputs
from ._custom_result import CustomForwardBackwardOutput
from ._futures import APIFuture, ClientFuture
from ._loop import submit, warn_if_in_loop
from ._loss_handle import LossHandle, check_handle_data
from ._queue import ModelQueue
from ._sampling import (
    SamplingClient,
    SamplingRetryConfig,
    check_sampling_source,
    create_sampling_client,
)
from ._session import SessionContext
from ._tokenizer import load_tokenizer
from ._transport import decode_response
from ._twins import awaiting, submitting

if TYPE_CHECKING:  # the engine imports JAX; ``import tinkjax`` does not need it
    from tinkjax.engine import CustomLossSpec, LossSpec, SpecOptions

    from ._telemetry import TelemetryReporter

__all__ = ["TrainingClient", "open_training_client"]

T = TypeVar("T")


class TrainingClient:
    """Trains one model (a LoRA adapter). Create it with
    :meth:`ServiceClient.create_lora_training_client` or ``create_training_client_from_state*``.

    Every call returns an :class:`APIFuture` at once; ``*_async`` twins are coroutines that
    return the same future (``await (await tc.forward_backward_async(...))``).
    """

    def __init__(self, session: SessionContext, model_id: str, *, next_seq_id: int = 1) -> None:
        self.session = session
        self.model_id = model_id
        self._info: GetInfoResponse | None = None
        self._queue = ModelQueue(session, model_id, next_seq_id=next_seq_id)

    def get_telemetry(self) -> TelemetryReporter | None:
        """The session's telemetry reporter (``None`` when telemetry is off)."""
        return self.session.telemetry

    def __repr__(self) -> str:
        return f"TrainingClient(model_id={self.model_id!r})"

    def _submit(self, coro: Coroutine[Any, Any, T]) -> APIFuture[T]:
        """Run ``coro`` on the client loop; return its :class:`APIFuture`."""
        return APIFuture(submit(coro))

    def _ordered(
        self, seq: int, path: str, body: Any, result_type: type[T], request_type: str
    ) -> Coroutine[Any, Any, T]:
        return self._queue.call(seq, path, body, result_type, request_type)

    # ------------------------------------------------------------ forward / backward
    def _fwdbwd(
        self,
        data: Sequence[Datum],
        loss_fn: LossFnType | str,
        loss_fn_config: Mapping[str, float | str] | None,
        forward_only: bool,
    ) -> APIFuture[ForwardBackwardOutput]:
        chunks = self._queue.chunk(list(data))
        seq_ids = self._queue.reserve(len(chunks))

        async def run() -> ForwardBackwardOutput:
            outputs = await self._queue.send_fwdbwd(
                chunks,
                seq_ids,
                loss_fn=loss_fn,
                loss_fn_config=loss_fn_config,
                forward_only=forward_only,
            )
            return combine_outputs(outputs)

        return self._submit(run())

    def forward(
        self,
        data: Sequence[Datum],
        loss_fn: LossFnType | str,
        loss_fn_config: Mapping[str, float | str] | None = None,
    ) -> APIFuture[ForwardBackwardOutput]:
        """Forward pass only: per-datum ``logprobs`` and the loss, no gradient accumulated."""
        return self._fwdbwd(data, loss_fn, loss_fn_config, True)

    forward_async = submitting(forward)

    def forward_backward(
        self,
        data: Sequence[Datum],
        loss_fn: LossFnType | str,
        loss_fn_config: Mapping[str, float | str] | None = None,
    ) -> APIFuture[ForwardBackwardOutput]:
        """Forward and backward pass; gradients accumulate until :meth:`optim_step`.

        The batch is split into chunks (≤ 1024 datums, ≤ 5 MB) sent concurrently; the result
        concatenates their outputs in order and reduces their metrics (``loss:sum`` is summed).
        """
        return self._fwdbwd(data, loss_fn, loss_fn_config, False)

    forward_backward_async = submitting(forward_backward)

    @overload
    def forward_backward_custom(
        self, /, data: Sequence[Datum], loss_fn: LossHandle
    ) -> APIFuture[ForwardBackwardOutput]: ...

    @overload
    def forward_backward_custom(
        self,
        /,
        data: Sequence[Datum],
        loss_fn: CustomLossSpec | LossSpec,
        *,
        loss_type_input: Literal["logprobs"] | None = None,
        **options: Unpack[SpecOptions],
    ) -> APIFuture[CustomForwardBackwardOutput]: ...

    def forward_backward_custom(
        self,
        /,
        data: Sequence[Datum],
        loss_fn: CustomLossSpec | LossSpec | LossHandle,
        *,
        loss_type_input: Literal["logprobs"] | None = None,
        **options: Unpack[SpecOptions],
    ) -> APIFuture[CustomForwardBackwardOutput] | APIFuture[ForwardBackwardOutput]:
        """A forward/backward step with a loss computed client-side (in JAX, or in torch).

        Two server passes (forward-only, then cross-entropy with ``weights = -∂loss/∂logprobs``);
        see :mod:`tinkjax.client._custom`. The result is a ``CustomForwardBackwardOutput``.

        Args:
            data: the datums; each needs ``target_tokens``.
            loss_fn: a :class:`tinkjax.engine.CustomLossSpec` (built once, reused every step),
                or its base loss (a built-in name, a ``PackedLoss``, a ``DatumLoss`` or a
                Tinker-style ``fn(data, logprobs_list) -> (loss, metrics)``), completed by the
                keyword ``options`` (``regularizers``, ``loss_fn_config``, ``track_grad_norms``,
                ``norm_method``, ``dtype``, ``bucketing``; see :class:`~tinkjax.engine.SpecOptions`).
                A Tinker-style function reads ``datum.loss_fn_inputs[key]`` (or ``datum[key]``);
                one written in torch (the official SDK's style: it refers to ``torch`` or calls
                ``.to_torch()``; the rule is in ``docs/compat.md``) runs as the official SDK
                runs it, with torch autograd, and takes no ``options``.
            loss_type_input: the official SDK's deprecated argument: ``None`` or
                ``"logprobs"`` (the loss always receives logprobs).

        A :class:`LossHandle` (from ``ServiceClient.create_custom_loss``) runs on the server
        instead: one ``forward_backward(data, "custom", {"loss_id": ...})``, whose result is the
        server's ``ForwardBackwardOutput`` (``loss:sum`` and the loss's metrics).

        Raises:
            EngineInputError: a bad spec or bad data (at call time, before any request).
            ValueError: a handle of another session, data without the inputs it reads, or a
                ``loss_type_input`` other than ``None``/``"logprobs"``.
        """
        if loss_type_input not in (None, "logprobs"):
            raise ValueError(
                f"loss_type_input must be None or 'logprobs' (deprecated), got {loss_type_input!r}"
            )
        if isinstance(loss_fn, LossHandle):
            if options:
                raise ValueError(f"a LossHandle takes no options, got {sorted(options)}")
            check_handle_data(loss_fn, data, self.session.session_id_if_ready)
            return self.forward_backward(data, "custom", {"loss_id": loss_fn.loss_id})
        # Imported on the first custom-loss call: the engine pulls in JAX, which
        # ``import tinkjax`` does not need.
        from ._custom import forward_backward_custom_async_impl

        return self._submit(
            forward_backward_custom_async_impl(self._queue, data, loss_fn, **options)
        )

    forward_backward_custom_async = submitting(forward_backward_custom)

    # ------------------------------------------------------------ optimizer
    def optim_step(
        self, optim_params: OptimParams | None = None, *, adam_params: AdamParams | None = None
    ) -> APIFuture[OptimStepResponse]:
        """Apply the accumulated gradients (AdamW or dimuon, per the model's optimizer family).

        Raises:
            ValueError: neither ``optim_params`` nor ``adam_params`` given (or both).
        """
        if (optim_params is None) == (adam_params is None):
            raise ValueError("pass exactly one of optim_params and adam_params")
        params = optim_params if optim_params is not None else adam_params
        seq = self._queue.reserve(1)[0]
        request = OptimStepRequest(
            model_id=self.model_id,
            seq_id=seq,
            adam_params=params if isinstance(params, AdamParams) else None,
            optimizer_params=params if isinstance(params, DimuonParams) else None,
        )
        return self._submit(
            self._ordered(seq, "/api/v1/optim_step", request, OptimStepResponse, "OptimStep")
        )

    optim_step_async = submitting(optim_step)

    # ------------------------------------------------------------ checkpoints
    def save_state(
        self,
        name: str,
        ttl_seconds: int | None = None,
        overwrite: bool = False,
        user_metadata: dict[str, str] | None = None,
    ) -> APIFuture[SaveWeightsResponse]:
        """Save weights and optimizer state as ``tinker://{model_id}/weights/{name}``."""
        seq = self._queue.reserve(1)[0]
        request = SaveWeightsRequest(
            model_id=self.model_id,
            path=name,
            seq_id=seq,
            ttl_seconds=ttl_seconds,
            overwrite=overwrite,
            user_metadata=user_metadata,
        )
        return self._submit(
            self._ordered(seq, "/api/v1/save_weights", request, SaveWeightsResponse, "SaveWeights")
        )

    save_state_async = submitting(save_state)

    def _load(
        self, path: str, optimizer: bool, weights_access_token: str | None
    ) -> APIFuture[LoadWeightsResponse]:
        seq = self._queue.reserve(1)[0]
        request = LoadWeightsRequest(
            path=path,
            optimizer=optimizer,
            model_id=self.model_id,
            seq_id=seq,
            weights_access_token=weights_access_token,
        )
        return self._submit(
            self._ordered(seq, "/api/v1/load_weights", request, LoadWeightsResponse, "LoadWeights")
        )

    def load_state(
        self, path: str, weights_access_token: str | None = None
    ) -> APIFuture[LoadWeightsResponse]:
        """Load the weights of checkpoint ``path`` into this model (optimizer state untouched).

        ``weights_access_token`` is sent with the request, for checkpoints another principal
        shared with one (the official SDK's parameter).
        """
        return self._load(path, False, weights_access_token)

    load_state_async = submitting(load_state)

    def load_state_with_optimizer(
        self, path: str, weights_access_token: str | None = None
    ) -> APIFuture[LoadWeightsResponse]:
        """Load weights and optimizer state of checkpoint ``path`` into this model
        (``weights_access_token`` as in :meth:`load_state`)."""
        return self._load(path, True, weights_access_token)

    load_state_with_optimizer_async = submitting(load_state_with_optimizer)

    def save_weights_for_sampler(
        self, name: str, ttl_seconds: int | None = None, user_metadata: dict[str, str] | None = None
    ) -> APIFuture[SaveWeightsForSamplerResponse]:
        """Save sampler weights as ``tinker://{model_id}/sampler_weights/{name}``."""
        seq = self._queue.reserve(1)[0]
        request = SaveWeightsForSamplerRequest(
            model_id=self.model_id,
            path=name,
            seq_id=seq,
            ttl_seconds=ttl_seconds,
            user_metadata=user_metadata,
        )

        async def run() -> SaveWeightsForSamplerResponse:
            out = await self._ordered(
                seq,
                "/api/v1/save_weights_for_sampler",
                request,
                SaveWeightsForSamplerResponseInternal,
                "SaveWeightsForSampler",
            )
            if out.path is None:
                raise APIResponseValidationError(
                    f"save_weights_for_sampler({name!r}) answered without a path"
                )
            return SaveWeightsForSamplerResponse(path=out.path)

        return self._submit(run())

    save_weights_for_sampler_async = submitting(save_weights_for_sampler)

    def save_weights_external(
        self,
        name: str,
        ttl_seconds: int | None = None,
        age_encryption_recipients: list[str] | None = None,
    ) -> APIFuture[SaveWeightsExternalResponse]:
        """Save the adapter in Hugging Face PEFT layout (``adapter_model.safetensors``,
        ``adapter_config.json``) as ``tinker://{model_id}/external_weights/{name}``, to download
        with :meth:`RestClient.get_external_weights_urls` or
        :meth:`RestClient.download_checkpoint`.

        Args:
            name: the checkpoint's name.
            ttl_seconds: seconds until the checkpoint expires (``None``: never).
            age_encryption_recipients: age recipients (``age1...`` keys or SSH public keys, at
                most 10); every file is then encrypted to them and named ``<file>.age``.
        """
        seq = self._queue.reserve(1)[0]
        request = SaveWeightsExternalRequest(
            model_id=self.model_id,
            path=name,
            seq_id=seq,
            ttl_seconds=ttl_seconds,
            age_encryption_recipients=age_encryption_recipients,
        )

        async def run() -> SaveWeightsExternalResponse:
            out = await self._ordered(
                seq,
                "/api/v1/save_weights_external",
                request,
                SaveWeightsExternalResponse,
                "SaveWeightsExternal",
            )
            if out.path is None:
                raise APIResponseValidationError(
                    f"save_weights_external({name!r}) answered without a path"
                )
            return out

        return self._submit(run())

    save_weights_external_async = submitting(save_weights_external)

    def save_weights_and_get_sampling_client(
        self,
        name: str | None = None,
        retry_config: SamplingRetryConfig | None = None,
        record_stability_info: bool = False,
        kind: Literal["snapshot", "inflight"] = "snapshot",
    ) -> APIFuture[SamplingClient]:
        """Snapshot the current weights and return a ``SamplingClient`` on them.

        With ``name`` the weights are also saved as a named sampler checkpoint.
        """
        if name is not None:
            saved = self.save_weights_for_sampler(name)

            async def named() -> SamplingClient:
                path = (await saved).path
                check_sampling_source(path, None)
                return await create_sampling_client(
                    self.session,
                    model_path=path,
                    base_model=None,
                    retry_config=retry_config,
                    record_stability_info=record_stability_info,
                )

            return self._submit(named())
        seq = self._queue.reserve(1)[0]
        sampling_seq = self.session.next_sampling_seq()
        request = SaveWeightsForSamplerRequest(
            model_id=self.model_id, sampling_session_seq_id=sampling_seq, kind=kind, seq_id=seq
        )

        async def unnamed() -> SamplingClient:
            out = await self._ordered(
                seq,
                "/api/v1/save_weights_for_sampler",
                request,
                SaveWeightsForSamplerResponseInternal,
                "SaveWeightsForSampler",
            )
            if out.sampling_session_id is None:
                raise APIResponseValidationError(
                    "save_weights_and_get_sampling_client answered without a sampling_session_id"
                )
            base = self._info.model_data.model_name if self._info is not None else None
            return SamplingClient(
                self.session,
                out.sampling_session_id,
                base_model=base,
                retry_config=retry_config,
                record_stability_info=record_stability_info,
            )

        return self._submit(unnamed())

    save_weights_and_get_sampling_client_async = awaiting(save_weights_and_get_sampling_client)

    def create_sampling_client(
        self,
        model_path: str,
        retry_config: SamplingRetryConfig | None = None,
        record_stability_info: bool = False,
    ) -> APIFuture[SamplingClient]:
        """A ``SamplingClient`` on saved sampler weights (same as the service's)."""
        self.session.check_open()
        if model_path is None:  # this one takes no base_model: name what it does take
            raise ConfigurationError(
                "TrainingClient.create_sampling_client needs model_path (a tinker:// path of "
                "saved sampler weights); for these weights use "
                "save_weights_and_get_sampling_client(), for a base model "
                "ServiceClient.create_sampling_client(base_model=...)"
            )
        check_sampling_source(model_path, None)
        return ClientFuture(
            submit(
                create_sampling_client(
                    self.session,
                    model_path=model_path,
                    base_model=None,
                    retry_config=retry_config,
                    record_stability_info=record_stability_info,
                )
            )
        )

    create_sampling_client_async = awaiting(create_sampling_client)

    # ------------------------------------------------------------ info
    async def _fetch_info(self) -> GetInfoResponse:
        resp = await self.session.transport.request(
            "POST",
            "/api/v1/get_info",
            json=GetInfoRequest(model_id=self.model_id),
            ids=self._queue.ids,
        )
        self._info = decode_response(resp, GetInfoResponse)
        return self._info

    def get_info(self) -> GetInfoResponse:
        """Model information (base model, LoRA rank, tokenizer id). Blocks."""
        warn_if_in_loop("TrainingClient.get_info()", "`await training_client.get_info_async()`")
        return submit(self._fetch_info()).result()

    async def get_info_async(self) -> GetInfoResponse:
        """Async twin of :meth:`get_info`."""
        return await APIFuture(submit(self._fetch_info()))

    @property
    def base_model(self) -> str | None:
        """The base model's name, from the info fetched at creation."""
        if self._info is None:
            return None
        return self._info.model_data.model_name or self._info.model_name

    def get_tokenizer(self) -> Any:
        """The tokenizer of the base model.

        ``tinkjax/…`` models use :class:`tinkjax.models.ByteTokenizer`; other models load a
        Hugging Face tokenizer when ``transformers`` is installed.

        Raises:
            ImportError: the model needs ``transformers`` and it is not installed.
        """
        info = self._info
        if info is None:
            info = self.get_info()
        name = info.model_data.model_name or info.model_name or ""
        return load_tokenizer(name, info.model_data.tokenizer_id)


async def open_training_client(session: SessionContext, model_id: str) -> TrainingClient:
    """The ``TrainingClient`` of a model the session just created or loaded, with its info
    fetched (``base_model``, the tokenizer)."""
    tc = TrainingClient(session, model_id)
    await tc._fetch_info()
    return tc
