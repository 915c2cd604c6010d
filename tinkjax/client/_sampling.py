"""``SamplingClient``: text generation and prompt logprobs from a sampling session.

HTTP-level retries are off for sampling; a retry handler above them resubmits a whole sample
(submit + poll, with a new ``seq_id``) after connection errors, 408/409/5xx and expired futures,
backing off with :class:`~._backoff.Backoff`. A 429 is not a failure: it opens the tenant's
backoff window (:mod:`._ratelimit`), which every sampler of the same ``(base_url, api_key)``
waits through, and the request is resent afterwards.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import json
import logging
import threading
import time
from typing import TYPE_CHECKING, Any

import msgspec

from tinkjax.codec import decode_future_answer, decode_sample_response
from tinkjax.errors import (
    APIConnectionError,
    APIResponseValidationError,
    APIStatusError,
    ConfigurationError,
    FutureExpiredError,
    RateLimitError,
)
from tinkjax.types import (
    CreateSamplingSessionRequest,
    CreateSamplingSessionResponse,
    GetSamplerResponse,
    ModelInput,
    SampleRequest,
    SampleResponse,
    SamplingParams,
    TensorData,
    UntypedAPIFuture,
)

from ._backoff import Backoff
from ._config import resolve_config
from ._embedded import start_embedded
from ._futures import APIFuture
from ._loop import submit, warn_if_in_loop
from ._paths import id_segment
from ._ratelimit import limiter_for
from ._session import SessionContext
from ._tokenizer import load_tokenizer
from ._transport import Transport, decode_response, is_retryable_status
from ._twins import awaiting

if TYPE_CHECKING:
    from ._telemetry import TelemetryReporter

logger = logging.getLogger("tinkjax.client")

#: Seconds between two "sampling is paused" warnings of one client (the official SDK's).
QUEUE_STATE_LOG_INTERVAL_S = 60.0

#: What a sampler handle holds: where the sampler lives and what it samples, no credentials.
_HANDLE_FIELDS = ("base_url", "sampling_session_id", "base_model", "model_path")

__all__ = [
    "SamplingClient",
    "SamplingRetryConfig",
    "check_sampling_source",
    "create_sampling_client",
]


class SamplingRetryConfig(msgspec.Struct, frozen=True, kw_only=True):
    """How the sampling retry handler behaves.

    Attributes:
        max_retries: resubmissions after failures (connection, 408/409/5xx, expired future).
        base_delay: first backoff delay, seconds (doubles per retry).
        max_delay: backoff cap, seconds.
        max_rate_limit_waits: 429 answers tolerated for one sample before ``RateLimitError``.
        max_concurrent: samples in flight per client (the server's
            ``sample_max_concurrent_requests`` lowers it).
        poll_timeout: overall seconds one attempt may wait for its result (``None``: no bound).
    """

    max_retries: int = 10
    base_delay: float = 0.5
    max_delay: float = 10.0
    max_rate_limit_waits: int = 200
    max_concurrent: int = 400
    poll_timeout: float | None = None


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, FutureExpiredError | APIConnectionError):
        return True
    return isinstance(exc, APIStatusError) and is_retryable_status(exc.status_code)


class SamplingClient:
    """Samples from one sampling session (base model or saved sampler weights).

    Create it with :meth:`ServiceClient.create_sampling_client` or
    :meth:`TrainingClient.save_weights_and_get_sampling_client`. Safe to fan out many
    concurrent ``sample`` calls.
    """

    def __init__(
        self,
        session: SessionContext,
        sampling_session_id: str,
        *,
        base_model: str | None = None,
        model_path: str | None = None,
        retry_config: SamplingRetryConfig | None = None,
        record_stability_info: bool = False,
    ) -> None:
        self.session = session
        self.sampling_session_id = sampling_session_id
        self.model_path = model_path
        self._base_model = base_model
        self.retry_config = retry_config or SamplingRetryConfig()
        self.record_stability_info = record_stability_info
        cfg = session.config
        self._limiter = limiter_for(cfg.base_url, cfg.api_key)
        self._seq_lock = threading.Lock()
        self._next_seq = 0
        self._semaphore: asyncio.Semaphore | None = None
        self._last_queue_state_logged = float("-inf")

    def get_telemetry(self) -> TelemetryReporter | None:
        """The session's telemetry reporter (``None`` when telemetry is off)."""
        return self.session.telemetry

    def __repr__(self) -> str:
        return f"SamplingClient(sampling_session_id={self.sampling_session_id!r})"

    # ------------------------------------------------------------ creation, handles
    @staticmethod
    def create(
        holder: SessionContext,
        *,
        model_path: str | None = None,
        base_model: str | None = None,
        sampling_session_id: str | None = None,
        retry_config: SamplingRetryConfig | None = None,
        record_stability_info: bool = False,
    ) -> APIFuture[SamplingClient]:
        """A client on a new sampling session (exactly one of ``model_path`` and
        ``base_model``) or on an existing one (``sampling_session_id`` alone), in the session
        ``holder`` (a :class:`~._session.SessionContext`, ``ServiceClient.session``).

        Raises:
            ConfigurationError: not exactly one source given.
        """
        if sampling_session_id is not None:
            if model_path is not None or base_model is not None:
                raise ConfigurationError(
                    "pass sampling_session_id alone, or one of model_path and base_model"
                )
            client = SamplingClient(
                holder,
                sampling_session_id,
                retry_config=retry_config,
                record_stability_info=record_stability_info,
            )

            async def existing() -> SamplingClient:
                await client._get_sampler()  # fails now if the sampler does not exist
                return client

            return APIFuture(submit(existing()))
        check_sampling_source(model_path, base_model)
        return APIFuture(
            submit(
                create_sampling_client(
                    holder,
                    model_path=model_path,
                    base_model=base_model,
                    retry_config=retry_config,
                    record_stability_info=record_stability_info,
                )
            )
        )

    def get_sampler_handle(self) -> str:
        """A string naming this client's sampler, to pass to other processes (no pickling).

        :meth:`from_sampler_handle` turns it into a new client for the same sampler, any
        number of times, in any process. The handle carries no credentials: the base URL,
        the sampling session id and what it samples (base model or weights path).
        """
        state = {
            "base_url": self.session.config.base_url,
            "sampling_session_id": self.sampling_session_id,
            "base_model": self._base_model,
            "model_path": self.model_path,
        }
        payload = json.dumps(state, separators=(",", ":"))
        return base64.urlsafe_b64encode(payload.encode()).decode()

    @staticmethod
    def from_sampler_handle(handle: str, *, api_key: str | None = None) -> SamplingClient:
        """A client for the sampler behind ``handle`` (from :meth:`get_sampler_handle`).

        It opens its own session on the handle's service, authenticated with ``api_key`` or
        this process's credentials resolved as for ``ServiceClient()`` (``TINKER_API_KEY``).

        Raises:
            ValueError: ``handle`` is not a sampler handle.
        """
        try:
            state = json.loads(base64.urlsafe_b64decode(handle.encode()))
        except (binascii.Error, ValueError, UnicodeDecodeError, AttributeError) as exc:
            raise ValueError(f"not a sampler handle: {handle!r:.60}") from exc
        if not isinstance(state, dict) or sorted(state) != sorted(_HANDLE_FIELDS):
            raise ValueError(f"not a sampler handle: {handle!r:.60}")
        if not isinstance(state["sampling_session_id"], str) or not state["sampling_session_id"]:
            raise ValueError("sampler handle: sampling_session_id must be a non-empty string")
        config = start_embedded(resolve_config(base_url=state["base_url"], api_key=api_key))
        session = SessionContext(config, Transport(config))
        return SamplingClient(
            session,
            state["sampling_session_id"],
            base_model=state["base_model"],
            model_path=state["model_path"],
        )

    def on_queue_state_change(self, queue_state: str, queue_state_reason: str | None) -> None:
        """Called while a sample waits, each time the server reports a new queue state:
        logs a warning (at most one a minute) when sampling is paused."""
        state = getattr(queue_state, "value", queue_state)  # the official SDK's enum too
        if state == "active":
            return
        now = time.monotonic()
        if now - self._last_queue_state_logged < QUEUE_STATE_LOG_INTERVAL_S:
            return
        self._last_queue_state_logged = now
        reason = queue_state_reason or {
            "paused_rate_limit": "concurrent sampler weights limit hit",
            "paused_capacity": "the backend is running short on capacity, please wait",
        }.get(str(state), "unknown")
        logger.warning(
            "Sampling is paused for sampler %s. Reason: %s", self.sampling_session_id, reason
        )

    def _reserve_seq(self) -> int:
        with self._seq_lock:
            seq = self._next_seq
            self._next_seq += 1
            return seq

    @property
    def _ids(self) -> dict[str, str | None]:
        return self.session.ids(sampling_session_id=self.sampling_session_id)

    def sample(
        self,
        prompt: ModelInput,
        num_samples: int,
        sampling_params: SamplingParams,
        include_prompt_logprobs: bool = False,
        topk_prompt_logprobs: int = 0,
        topk_sample_logprobs: int = 0,
        target_prompt_logprobs: TensorData | None = None,
        prompt_alt_tokens_k: int = 0,
        prompt_logprobs_last_n: int | None = None,
    ) -> APIFuture[SampleResponse]:
        """Sample ``num_samples`` continuations of ``prompt``.

        Raises (from the future):
            RateLimitError: more than ``max_rate_limit_waits`` 429s for this sample.
            RequestFailedError: the server failed the request.
            APIStatusError / APIConnectionError: retries exhausted.
        """
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        fields: dict[str, Any] = {
            "prompt": prompt,
            "sampling_params": sampling_params,
            "num_samples": num_samples,
            "sampling_session_id": self.sampling_session_id,
            "prompt_logprobs": include_prompt_logprobs,
            "topk_prompt_logprobs": topk_prompt_logprobs,
            "topk_sample_logprobs": topk_sample_logprobs,
            "target_prompt_logprobs": target_prompt_logprobs,
            "prompt_alt_tokens_k": prompt_alt_tokens_k,
            "prompt_logprobs_last_n": prompt_logprobs_last_n,
            "record_stability_info": self.record_stability_info,
        }
        return APIFuture(submit(self._sample(fields)))

    sample_async = awaiting(sample)

    def compute_logprobs(
        self, prompt: ModelInput, prompt_logprobs_last_n: int | None = None
    ) -> APIFuture[list[float | None]]:
        """Logprob of each prompt token given the previous ones (``None`` at position 0)."""
        fut = self.sample(
            prompt,
            1,
            SamplingParams(max_tokens=1),
            include_prompt_logprobs=True,
            prompt_logprobs_last_n=prompt_logprobs_last_n,
        )

        async def run() -> list[float | None]:
            resp = await fut
            if resp.prompt_logprobs is None:
                raise APIResponseValidationError("compute_logprobs: no prompt_logprobs returned")
            return resp.prompt_logprobs

        return APIFuture(submit(run()))

    compute_logprobs_async = awaiting(compute_logprobs)

    async def _sample(self, fields: dict[str, Any]) -> SampleResponse:
        rc = self.retry_config
        if self._semaphore is None:
            limit = min(
                rc.max_concurrent, self.session.server_config.sample_max_concurrent_requests
            )
            self._semaphore = asyncio.Semaphore(max(1, limit))
        backoff = Backoff(base=rc.base_delay, cap=rc.max_delay)
        failures = 0
        rate_limited = 0
        transport = self.session.transport
        async with self._semaphore:
            while True:
                await self._limiter.wait()
                request = SampleRequest(seq_id=self._reserve_seq(), **fields)
                try:
                    resp = await transport.request(
                        "POST",
                        "/api/v1/asample",
                        json=request,
                        max_retries=0,
                        headers={"X-Tinker-Sampling-Backpressure": "1"},
                        ids=self._ids,
                    )
                    ack = decode_response(resp, UntypedAPIFuture)
                    seq_ids = ack.sample_sequence_ids
                    if seq_ids is not None and len(seq_ids) != fields["num_samples"]:
                        raise APIResponseValidationError(
                            f"asample answered {len(seq_ids)} sample_sequence_ids for "
                            f"num_samples={fields['num_samples']}"
                        )
                    result = await self.session.poll(
                        ack.request_id,
                        SampleResponse,
                        request_type="Sample",
                        ids=self._ids,
                        timeout=rc.poll_timeout,
                        decode=functools.partial(_decode_sample, seq_ids=seq_ids),
                        on_queue_state=self.on_queue_state_change,
                    )
                except RateLimitError as exc:
                    rate_limited += 1
                    if rate_limited > rc.max_rate_limit_waits:
                        raise
                    self._limiter.open_window(getattr(exc, "retry_after", None))
                    continue
                except Exception as exc:
                    if not _retryable(exc) or failures >= rc.max_retries:
                        raise
                    failures += 1
                    await asyncio.sleep(backoff.next(getattr(exc, "retry_after", None)))
                    continue
                self._limiter.record_success()
                return result

    # ------------------------------------------------------------ info
    async def _get_sampler(self) -> GetSamplerResponse:
        resp = await self.session.transport.request(
            "GET",
            f"/api/v1/samplers/{id_segment(self.sampling_session_id, 'sampler_id')}",
            ids=self._ids,
        )
        info = decode_response(resp, GetSamplerResponse)
        self._base_model = info.base_model
        return info

    def get_base_model(self) -> str:
        """The base model's name (asks the server when not known yet). May block."""
        if self._base_model is not None:
            return self._base_model
        warn_if_in_loop(
            "SamplingClient.get_base_model()", "`await sampling_client.get_base_model_async()`"
        )
        return submit(self._get_sampler()).result().base_model

    async def get_base_model_async(self) -> str:
        """Async twin of :meth:`get_base_model`."""
        if self._base_model is not None:
            return self._base_model
        return (await APIFuture(submit(self._get_sampler()))).base_model

    def get_tokenizer(self) -> Any:
        """The base model's tokenizer (see :meth:`TrainingClient.get_tokenizer`)."""
        return load_tokenizer(self.get_base_model())


def check_sampling_source(model_path: str | None, base_model: str | None) -> None:
    """Raises ``ConfigurationError`` unless exactly one of ``model_path`` (a ``tinker://``
    path) and ``base_model`` is given."""
    if (model_path is None) == (base_model is None):
        raise ConfigurationError("pass exactly one of model_path and base_model")
    if model_path is not None and not model_path.startswith("tinker://"):
        raise ConfigurationError(f"model_path {model_path!r} must start with 'tinker://'")


async def create_sampling_client(
    session: SessionContext,
    *,
    model_path: str | None,
    base_model: str | None,
    retry_config: SamplingRetryConfig | None,
    record_stability_info: bool,
) -> SamplingClient:
    """Open a sampling session on saved sampler weights or a base model (checked by
    :func:`check_sampling_source`) and return its client."""
    session_id = await session.get_session_id()
    request = CreateSamplingSessionRequest(
        session_id=session_id,
        sampling_session_seq_id=session.next_sampling_seq(),
        base_model=base_model,
        model_path=model_path,
    )
    resp = await session.transport.request(
        "POST", "/api/v1/create_sampling_session", json=request, ids={"session_id": session_id}
    )
    created = decode_response(resp, CreateSamplingSessionResponse)
    return SamplingClient(
        session,
        created.sampling_session_id,
        base_model=base_model,
        model_path=model_path,
        retry_config=retry_config,
        record_stability_info=record_stability_info,
    )


def _decode_sample(body: bytes, content_type: str, seq_ids: list[str] | None) -> Any:
    if "application/x-protobuf" in content_type:
        return decode_sample_response(body, seq_ids)
    answer = decode_future_answer(body, SampleResponse, content_type=content_type)
    if isinstance(answer, SampleResponse) and seq_ids is not None:
        if len(seq_ids) != len(answer.sequences):
            raise APIResponseValidationError(
                f"{len(answer.sequences)} sequences but {len(seq_ids)} sample_sequence_ids"
            )
        sequences = [
            msgspec.structs.replace(s, sequence_id=i)
            for s, i in zip(answer.sequences, seq_ids, strict=True)
        ]
        answer = msgspec.structs.replace(answer, sequences=sequences)
    return answer
