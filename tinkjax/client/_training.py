"""``TrainingClient``: forward/backward, optimizer steps and checkpoints of one model.

Ordering: every call reserves its ``seq_id``\\ s when it is made (so the server runs requests in
call order), and submissions are POSTed in ``seq_id`` order (the chunks of one call together).
A submission that is rejected or cannot be delivered would leave a gap the server waits on, so
its ``seq_id`` is filled with a forward-only no-op; if even that fails the client is
*poisoned*: later calls raise instead of hanging.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import numpy as np

from tinkjax.codec import encode_forward_backward_request
from tinkjax.codec._proto_request_write import WeightedChunk, encode_weighted_request
from tinkjax.errors import APIConnectionError, APIResponseValidationError
from tinkjax.types import (
    AdamParams,
    Datum,
    DimuonParams,
    ForwardBackwardInput,
    ForwardBackwardOutput,
    ForwardBackwardRequest,
    ForwardRequest,
    GetInfoRequest,
    GetInfoResponse,
    LoadWeightsRequest,
    LoadWeightsResponse,
    LossFnType,
    ModelInput,
    OptimParams,
    OptimStepRequest,
    OptimStepResponse,
    SaveWeightsForSamplerRequest,
    SaveWeightsForSamplerResponse,
    SaveWeightsForSamplerResponseInternal,
    SaveWeightsRequest,
    SaveWeightsResponse,
    TensorData,
    UntypedAPIFuture,
)

from ._chunking import chunk_data, combine_outputs
from ._futures import APIFuture
from ._loop import submit, warn_if_in_loop
from ._polling import poll_future
from ._transport import decode_response

if TYPE_CHECKING:
    from ._custom import CustomForwardBackwardOutput
    from ._sampling import SamplingClient, SamplingRetryConfig
    from ._service import ServiceClient

__all__ = ["TrainingClient"]

T = TypeVar("T")


def noop_datum() -> Datum:
    """One token with zero weight: a forward-only request of it changes nothing on the server
    (used to occupy a reserved ``seq_id`` that will not carry its real request)."""
    return Datum(
        model_input=ModelInput.from_ints([0]),
        loss_fn_inputs={
            "target_tokens": TensorData.from_numpy(np.zeros(1, np.int64)),
            "weights": TensorData.from_numpy(np.zeros(1, np.float32)),
        },
    )


class TrainingClient:
    """Trains one model (a LoRA adapter). Create it with
    :meth:`ServiceClient.create_lora_training_client` or ``create_training_client_from_state*``.

    Every call returns an :class:`APIFuture` at once; ``*_async`` twins are coroutines that
    return the same future (``await (await tc.forward_backward_async(...))``).
    """

    def __init__(self, service: ServiceClient, model_id: str, *, next_seq_id: int = 1) -> None:
        self.service = service
        self.model_id = model_id
        self._info: GetInfoResponse | None = None
        self._seq_lock = threading.Lock()
        self._next_seq = next_seq_id
        self._turn = next_seq_id
        self._turn_cond: asyncio.Condition | None = None
        self._poisoned: BaseException | None = None

    def __repr__(self) -> str:
        return f"TrainingClient(model_id={self.model_id!r})"

    @property
    def _ids(self) -> dict[str, str | None]:
        return {"session_id": self.service.session_id_if_ready, "model_id": self.model_id}

    # ------------------------------------------------------------ private contract
    def _reserve_seq_ids(self, n: int) -> list[int]:
        """Reserve ``n`` consecutive wire ``seq_id``\\ s now (call order = server order)."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        with self._seq_lock:
            first = self._next_seq
            self._next_seq += n
        return list(range(first, first + n))

    def _chunk_data(self, data: list[Datum]) -> list[list[Datum]]:
        """Split a batch into requests (≤ the server's datum and byte limits)."""
        cfg = self.service.server_config
        return chunk_data(
            data, max_len=cfg.fwdbwd_max_chunk_len, max_bytes=cfg.fwdbwd_max_chunk_bytes_count
        )

    async def _send_fwdbwd_chunks(
        self,
        chunks: Sequence[list[Datum] | WeightedChunk],
        seq_ids: list[int],
        *,
        loss_fn: str,
        loss_fn_config: Mapping[str, float | str] | None,
        forward_only: bool,
    ) -> list[ForwardBackwardOutput]:
        """Submit chunk ``i`` with ``seq_ids[i]`` (all concurrently, in turn), await every
        result, and return them in chunk order."""
        if len(chunks) != len(seq_ids):
            raise ValueError(f"{len(chunks)} chunks but {len(seq_ids)} seq_ids")
        if not chunks:
            return []
        config = dict(loss_fn_config) if loss_fn_config else None
        posts = [
            (lambda c=c, s=s: self._post_fwdbwd(c, s, loss_fn, config, forward_only))
            for c, s in zip(chunks, seq_ids, strict=True)
        ]
        acks = await self._submit_in_turn(seq_ids, posts)
        request_type = "Forward" if forward_only else "ForwardBackward"
        polls = [
            poll_future(
                self.service.transport,
                ack.request_id,
                ForwardBackwardOutput,
                request_type=request_type,
                ids=self._ids,
            )
            for ack in acks
        ]
        if len(polls) == 1:  # no task per poll for the common single-chunk call
            return [await polls[0]]
        return list(await asyncio.gather(*polls))

    def _combine_outputs(self, outputs: Sequence[ForwardBackwardOutput]) -> ForwardBackwardOutput:
        """Concatenate per-chunk outputs and reduce their metrics by suffix."""
        return combine_outputs(outputs)

    def _submit(self, coro: Coroutine[Any, Any, T]) -> APIFuture[T]:
        """Run ``coro`` on the client loop; return its :class:`APIFuture`."""
        return APIFuture(submit(coro))

    # ------------------------------------------------------------ ordering
    def _cond(self) -> asyncio.Condition:
        if self._turn_cond is None:
            self._turn_cond = asyncio.Condition()
        return self._turn_cond

    async def _submit_in_turn(
        self, seq_ids: Sequence[int], posts: Sequence[Callable[[], Awaitable[T]]]
    ) -> list[T]:
        cond = self._cond()
        async with cond:
            await cond.wait_for(lambda: self._poisoned is not None or self._turn >= seq_ids[0])
            if self._poisoned is not None:
                raise APIConnectionError(
                    f"{self!r} is unusable: an earlier request was never delivered "
                    f"({type(self._poisoned).__name__}: {self._poisoned})"
                ) from self._poisoned
        try:
            results: list[T | BaseException]
            if len(posts) == 1:  # no task for the common single submission
                try:
                    results = [await posts[0]()]
                except Exception as exc:
                    results = [exc]
            else:
                results = await asyncio.gather(*(p() for p in posts), return_exceptions=True)
            for seq_id, r in zip(seq_ids, results, strict=True):
                if isinstance(r, Exception):
                    await self._fill_gap(seq_id, r)
        finally:
            async with cond:
                self._turn = max(self._turn, seq_ids[-1] + 1)
                cond.notify_all()
        for r in results:
            if isinstance(r, BaseException):
                raise r
        return results  # type: ignore[return-value]

    async def _fill_gap(self, seq_id: int, cause: Exception) -> None:
        """Occupy ``seq_id`` after its submission failed, so later requests are not stuck.

        A rejected or undeliverable submission leaves a hole in the model's ``seq_id`` order
        that the server would wait on. A forward-only no-op (one token, zero weight, nothing
        accumulated) takes its place; if the original did arrive, the server's
        ``(model_id, seq_id)`` deduplication ignores the no-op. If even that cannot be
        delivered the client is poisoned: later calls raise instead of hanging.
        """
        try:
            await self._post_fwdbwd([noop_datum()], seq_id, "cross_entropy", None, True)
        except Exception:
            await self._poison(cause)

    async def _poison(self, exc: BaseException) -> None:
        cond = self._cond()
        async with cond:
            if self._poisoned is None:
                self._poisoned = exc
            cond.notify_all()

    async def _post(self, path: str, body: Any) -> UntypedAPIFuture:
        resp = await self.service.transport.request("POST", path, json=body, ids=self._ids)
        return decode_response(resp, UntypedAPIFuture)

    async def _post_fwdbwd(
        self,
        chunk: list[Datum] | WeightedChunk,
        seq_id: int,
        loss_fn: str,
        loss_fn_config: dict[str, float | str] | None,
        forward_only: bool,
    ) -> UntypedAPIFuture:
        transport = self.service.transport
        body: bytes
        if isinstance(chunk, WeightedChunk):  # pre-encoded datums (forward_backward_custom)
            if loss_fn_config or transport.config.wire_mode == "json":
                raise ValueError("pre-encoded chunks are sent as protobuf without a config")
            body = encode_weighted_request(
                chunk,
                model_id=self.model_id,
                seq_id=seq_id,
                loss_fn=loss_fn,
                forward_only=forward_only,
            )
        else:
            fb_input = ForwardBackwardInput(
                data=chunk,
                loss_fn=loss_fn,  # type: ignore[arg-type]
                loss_fn_config=loss_fn_config,
            )
            request: ForwardRequest | ForwardBackwardRequest
            if forward_only:
                request = ForwardRequest(
                    forward_input=fb_input, model_id=self.model_id, seq_id=seq_id
                )
            else:
                request = ForwardBackwardRequest(
                    forward_backward_input=fb_input, model_id=self.model_id, seq_id=seq_id
                )
            if transport.config.wire_mode == "json":
                path = "/api/v1/forward" if forward_only else "/api/v1/forward_backward"
                return await self._post(path, request)
            body = encode_forward_backward_request(request)
        resp = await transport.request(
            "POST",
            "/api/v1/forward_backward",
            content=body,
            content_type="application/x-protobuf",
            ids=self._ids,
        )
        return decode_response(resp, UntypedAPIFuture)

    async def _ordered_call(
        self, seq_id: int, path: str, body: Any, result_type: type[T], request_type: str
    ) -> T:
        (ack,) = await self._submit_in_turn([seq_id], [lambda: self._post(path, body)])
        return await poll_future(
            self.service.transport,
            ack.request_id,
            result_type,
            request_type=request_type,
            ids=self._ids,
        )

    # ------------------------------------------------------------ forward / backward
    def _fwdbwd(
        self,
        data: Sequence[Datum],
        loss_fn: LossFnType | str,
        loss_fn_config: Mapping[str, float | str] | None,
        forward_only: bool,
    ) -> APIFuture[ForwardBackwardOutput]:
        chunks = self._chunk_data(list(data))
        seq_ids = self._reserve_seq_ids(len(chunks))

        async def run() -> ForwardBackwardOutput:
            outputs = await self._send_fwdbwd_chunks(
                chunks,
                seq_ids,
                loss_fn=loss_fn,
                loss_fn_config=loss_fn_config,
                forward_only=forward_only,
            )
            return self._combine_outputs(outputs)

        return self._submit(run())

    def forward(
        self,
        data: Sequence[Datum],
        loss_fn: LossFnType | str,
        loss_fn_config: Mapping[str, float | str] | None = None,
    ) -> APIFuture[ForwardBackwardOutput]:
        """Forward pass only: per-datum ``logprobs`` and the loss, no gradient accumulated."""
        return self._fwdbwd(data, loss_fn, loss_fn_config, True)

    async def forward_async(
        self,
        data: Sequence[Datum],
        loss_fn: LossFnType | str,
        loss_fn_config: Mapping[str, float | str] | None = None,
    ) -> APIFuture[ForwardBackwardOutput]:
        """Async twin of :meth:`forward`."""
        return self.forward(data, loss_fn, loss_fn_config)

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

    async def forward_backward_async(
        self,
        data: Sequence[Datum],
        loss_fn: LossFnType | str,
        loss_fn_config: Mapping[str, float | str] | None = None,
    ) -> APIFuture[ForwardBackwardOutput]:
        """Async twin of :meth:`forward_backward`."""
        return self.forward_backward(data, loss_fn, loss_fn_config)

    def forward_backward_custom(
        self,
        data: Sequence[Datum],
        loss_fn: Any,
        *,
        regularizers: Sequence[Any] = (),
        track_grad_norms: bool = False,
        loss_fn_config: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> APIFuture[CustomForwardBackwardOutput]:
        """A forward/backward step with a loss computed client-side in JAX.

        Two server passes (forward-only, then cross-entropy with ``weights = -∂loss/∂logprobs``);
        see :mod:`tinkjax.client._custom`. The result is a ``CustomForwardBackwardOutput``.
        """
        from tinkjax.client._custom import forward_backward_custom_async_impl

        coro = forward_backward_custom_async_impl(
            self,
            list(data),
            loss_fn,
            regularizers=regularizers,
            track_grad_norms=track_grad_norms,
            loss_fn_config=loss_fn_config,
            **kwargs,
        )
        return self._submit(coro)

    async def forward_backward_custom_async(
        self,
        data: Sequence[Datum],
        loss_fn: Any,
        *,
        regularizers: Sequence[Any] = (),
        track_grad_norms: bool = False,
        loss_fn_config: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> APIFuture[CustomForwardBackwardOutput]:
        """Async twin of :meth:`forward_backward_custom`."""
        return self.forward_backward_custom(
            data,
            loss_fn,
            regularizers=regularizers,
            track_grad_norms=track_grad_norms,
            loss_fn_config=loss_fn_config,
            **kwargs,
        )

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
        seq = self._reserve_seq_ids(1)[0]
        request = OptimStepRequest(
            model_id=self.model_id,
            seq_id=seq,
            adam_params=params if isinstance(params, AdamParams) else None,
            optimizer_params=params if isinstance(params, DimuonParams) else None,
        )
        return self._submit(
            self._ordered_call(seq, "/api/v1/optim_step", request, OptimStepResponse, "OptimStep")
        )

    async def optim_step_async(
        self, optim_params: OptimParams | None = None, *, adam_params: AdamParams | None = None
    ) -> APIFuture[OptimStepResponse]:
        """Async twin of :meth:`optim_step`."""
        return self.optim_step(optim_params, adam_params=adam_params)

    # ------------------------------------------------------------ checkpoints
    def save_state(
        self,
        name: str,
        ttl_seconds: int | None = None,
        overwrite: bool = False,
        user_metadata: dict[str, str] | None = None,
    ) -> APIFuture[SaveWeightsResponse]:
        """Save weights and optimizer state as ``tinker://{model_id}/weights/{name}``."""
        seq = self._reserve_seq_ids(1)[0]
        request = SaveWeightsRequest(
            model_id=self.model_id,
            path=name,
            seq_id=seq,
            ttl_seconds=ttl_seconds,
            overwrite=overwrite,
            user_metadata=user_metadata,
        )
        return self._submit(
            self._ordered_call(
                seq, "/api/v1/save_weights", request, SaveWeightsResponse, "SaveWeights"
            )
        )

    async def save_state_async(
        self,
        name: str,
        ttl_seconds: int | None = None,
        overwrite: bool = False,
        user_metadata: dict[str, str] | None = None,
    ) -> APIFuture[SaveWeightsResponse]:
        """Async twin of :meth:`save_state`."""
        return self.save_state(name, ttl_seconds, overwrite, user_metadata)

    def _load(self, path: str, optimizer: bool) -> APIFuture[LoadWeightsResponse]:
        seq = self._reserve_seq_ids(1)[0]
        request = LoadWeightsRequest(
            path=path, optimizer=optimizer, model_id=self.model_id, seq_id=seq
        )
        return self._submit(
            self._ordered_call(
                seq, "/api/v1/load_weights", request, LoadWeightsResponse, "LoadWeights"
            )
        )

    def load_state(self, path: str) -> APIFuture[LoadWeightsResponse]:
        """Load the weights of checkpoint ``path`` into this model (optimizer state untouched)."""
        return self._load(path, False)

    async def load_state_async(self, path: str) -> APIFuture[LoadWeightsResponse]:
        """Async twin of :meth:`load_state`."""
        return self.load_state(path)

    def load_state_with_optimizer(self, path: str) -> APIFuture[LoadWeightsResponse]:
        """Load weights and optimizer state of checkpoint ``path`` into this model."""
        return self._load(path, True)

    async def load_state_with_optimizer_async(self, path: str) -> APIFuture[LoadWeightsResponse]:
        """Async twin of :meth:`load_state_with_optimizer`."""
        return self.load_state_with_optimizer(path)

    def save_weights_for_sampler(
        self, name: str, ttl_seconds: int | None = None, user_metadata: dict[str, str] | None = None
    ) -> APIFuture[SaveWeightsForSamplerResponse]:
        """Save sampler weights as ``tinker://{model_id}/sampler_weights/{name}``."""
        seq = self._reserve_seq_ids(1)[0]
        request = SaveWeightsForSamplerRequest(
            model_id=self.model_id,
            path=name,
            seq_id=seq,
            ttl_seconds=ttl_seconds,
            user_metadata=user_metadata,
        )

        async def run() -> SaveWeightsForSamplerResponse:
            out = await self._ordered_call(
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

    async def save_weights_for_sampler_async(
        self, name: str, ttl_seconds: int | None = None, user_metadata: dict[str, str] | None = None
    ) -> APIFuture[SaveWeightsForSamplerResponse]:
        """Async twin of :meth:`save_weights_for_sampler`."""
        return self.save_weights_for_sampler(name, ttl_seconds, user_metadata)

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
                return await self.service.create_sampling_client(
                    model_path=path,
                    retry_config=retry_config,
                    record_stability_info=record_stability_info,
                )

            return self._submit(named())
        seq = self._reserve_seq_ids(1)[0]
        sampling_seq = self.service._next_sampling_seq()
        request = SaveWeightsForSamplerRequest(
            model_id=self.model_id, sampling_session_seq_id=sampling_seq, kind=kind, seq_id=seq
        )

        async def unnamed() -> SamplingClient:
            from ._sampling import SamplingClient

            out = await self._ordered_call(
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
                self.service,
                out.sampling_session_id,
                base_model=base,
                retry_config=retry_config,
                record_stability_info=record_stability_info,
            )

        return self._submit(unnamed())

    async def save_weights_and_get_sampling_client_async(
        self,
        name: str | None = None,
        retry_config: SamplingRetryConfig | None = None,
        record_stability_info: bool = False,
        kind: Literal["snapshot", "inflight"] = "snapshot",
    ) -> SamplingClient:
        """Async twin of :meth:`save_weights_and_get_sampling_client` (returns the client)."""
        return await self.save_weights_and_get_sampling_client(
            name, retry_config, record_stability_info, kind
        )

    def create_sampling_client(
        self,
        model_path: str,
        retry_config: SamplingRetryConfig | None = None,
        record_stability_info: bool = False,
    ) -> APIFuture[SamplingClient]:
        """A ``SamplingClient`` on saved sampler weights (same as the service's)."""
        return self.service.create_sampling_client(
            model_path=model_path,
            retry_config=retry_config,
            record_stability_info=record_stability_info,
        )

    # ------------------------------------------------------------ info
    async def _fetch_info(self) -> GetInfoResponse:
        resp = await self.service.transport.request(
            "POST", "/api/v1/get_info", json=GetInfoRequest(model_id=self.model_id), ids=self._ids
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
        from ._tokenizer import load_tokenizer

        info = self._info
        if info is None:
            info = self.get_info()
        name = info.model_data.model_name or info.model_name or ""
        return load_tokenizer(name, info.model_data.tokenizer_id)
