"""The ``retrieve_future`` loop (protocol §6.2).

===========================  ========================================================
answer                       what the loop does
===========================  ========================================================
2xx protobuf                 decode as the expected type (fwd/bwd output, sample)
2xx ``type: try_again``      poll again (queue state surfaced as an event and a log)
2xx ``error``                raise :class:`~tinkjax.errors.RequestFailedError`
2xx ``complete_metadata``    poll again without ``allow_metadata_only``
2xx other JSON               decode as the expected type
408                          poll again (the body's queue state is surfaced)
429, connection error        back off (``retry-after`` honoured, 1 s → 30 s), poll again
5xx                          back off (0.25 s → 10 s), poll again
400                          up to 3 re-polls, then :class:`~tinkjax.errors.BadRequestError`
402                          pause 5 s steps up to ``billing_pause_s``, then ``BillingError``
410                          :class:`~tinkjax.errors.FutureExpiredError`
other 4xx                    raise the status's error class
===========================  ========================================================

Quick ``try_again`` answers (a server that does not long-poll) are spaced by a short growing
delay, so the loop never spins. ``timeout`` bounds the whole wait; ``error_timeout``
(``ClientConfig.poll_error_timeout``, 300 s by default, ``TINKJAX_POLL_ERROR_TIMEOUT``) bounds
how long errors in a row (429, 5xx, connection failures, no answer) are polled through — a
408/``try_again`` (queued or running) or any other answer ends the run of errors. Both raise
:class:`~tinkjax.errors.FutureTimeoutError` naming the request, how long it was waited on and
the last error seen.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from tinkjax import events
from tinkjax.codec import Wire, decode_future_answer, decode_json
from tinkjax.errors import (
    APIConnectionError,
    APIResponseValidationError,
    DecodeError,
    FutureExpiredError,
    FutureTimeoutError,
    RequestFailedError,
)
from tinkjax.types import (
    FutureRetrieveRequest,
    MetadataOnlyResponse,
    RequestFailedResponse,
    TryAgainResponse,
)

from ._backoff import Backoff, retry_after_seconds
from ._config import mask_secrets
from ._loop import note_waiting_on
from ._transport import Transport

__all__ = ["Decoder", "poll_future"]

logger = logging.getLogger("tinkjax.client")

T = TypeVar("T")

Decoder = Callable[[bytes, str], Any]

_POLL_TIMEOUT_S = 45.0
_QUICK_ANSWER_S = 0.5


async def poll_future(
    transport: Transport,
    request_id: str,
    result_type: type[T],
    *,
    wire: Wire,
    request_type: str,
    ids: Mapping[str, str | None] | None = None,
    timeout: float | None = None,
    decode: Decoder | None = None,
    billing_pause_s: float = 3600.0,
    error_timeout: float | None = None,
    on_queue_state: Callable[[str, str | None], None] | None = None,
) -> T:
    """Poll ``request_id`` until it resolves to a ``result_type`` (or fails); ``wire`` says
    what the poll accepts.

    Args:
        error_timeout: seconds of errors in a row after which polling stops (``None``: the
            transport configuration's ``poll_error_timeout``).
        on_queue_state: called with ``(queue_state, reason)`` each time a ``try_again`` answer
            reports a new queue state (``SamplingClient.on_queue_state_change``).

    Raises:
        RequestFailedError: the request failed server-side (``.category``).
        FutureExpiredError: the server no longer holds the future (HTTP 410).
        FutureTimeoutError: ``timeout`` elapsed, or only errors came for ``error_timeout``.
        DecodeError: a 2xx answer that is not a valid result.
        APIStatusError: a fatal HTTP status.
    """
    headers = {"X-Tinker-Request-Type": request_type, "Accept": wire.poll_accept(result_type)}
    deadline = None if timeout is None else time.monotonic() + timeout
    allow_metadata_only = True
    iteration = 0
    bad_requests = 0
    billing_started: float | None = None
    slow = Backoff(base=1.0, cap=30.0)  # 429 and connection errors
    server = Backoff(base=0.25, cap=10.0)  # 5xx
    quick = Backoff(base=0.02, cap=1.0)  # try_again answered without long-polling
    queue_state: str | None = None
    limit = transport.config.poll_error_timeout if error_timeout is None else error_timeout
    started = time.monotonic()
    failing_since: float | None = None  # start of the current run of errors
    last_error: str | None = None
    note_waiting_on(request_type, request_id)

    def error_deadline() -> float | None:
        return None if failing_since is None else failing_since + limit

    def failed(error: str) -> None:
        """Count one error answer; raise once errors came for ``limit`` seconds in a row."""
        nonlocal failing_since, last_error
        now = time.monotonic()
        failing_since = now if failing_since is None else failing_since
        last_error = error
        if now - failing_since >= limit:
            raise FutureTimeoutError(
                f"{request_type} request {request_id}: the server answered only errors for "
                f"{now - failing_since:.1f} s in a row (poll_error_timeout={limit} s, "
                f"TINKJAX_POLL_ERROR_TIMEOUT; polled {now - started:.1f} s in all); "
                f"last error: {error}",
                request_id=request_id,
                request_type=request_type,
                waited_s=now - started,
                last_error=error,
            )

    def answered() -> None:
        nonlocal failing_since, last_error
        failing_since = last_error = None

    async def sleep(delay: float) -> None:
        for end in (deadline, error_deadline()):
            if end is not None:
                delay = min(delay, max(0.0, end - time.monotonic()))
        await asyncio.sleep(delay)

    while True:
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            seen = f"last error: {last_error}" if last_error else f"queue state: {queue_state}"
            raise FutureTimeoutError(
                f"{request_type} request {request_id} did not resolve within {timeout} s "
                f"(timeout={timeout}); {seen}",
                request_id=request_id,
                request_type=request_type,
                waited_s=now - started,
                last_error=last_error,
            )
        poll_timeout = _POLL_TIMEOUT_S
        for end in (deadline, error_deadline()):
            if end is not None:
                poll_timeout = max(0.5, min(poll_timeout, end - now + 0.5))
        headers["X-Tinker-Request-Iteration"] = str(iteration)
        iteration += 1
        t0 = time.monotonic()
        try:
            response = await transport.request(
                "POST",
                "/api/v1/retrieve_future",
                json=FutureRetrieveRequest(
                    request_id=request_id, allow_metadata_only=allow_metadata_only
                ),
                headers=headers,
                max_retries=0,
                timeout=poll_timeout,
                raise_for_status=False,
                ids=ids,
            )
        except APIConnectionError as exc:
            failed(f"{type(exc).__name__}: {exc}")
            delay = slow.next()
            logger.debug("retrieve_future %s: %s; retrying in %.2fs", request_id, exc, delay)
            await sleep(delay)
            continue
        status = response.status_code
        elapsed = time.monotonic() - t0
        if 200 <= status < 300 or status == 408:
            content_type = response.headers.get("content-type", "application/json")
            try:
                if status == 408:
                    answer: Any = _try_again_of(response.content, request_id)
                elif decode is not None:
                    answer = decode(response.content, content_type)
                else:
                    answer = decode_future_answer(
                        response.content, result_type, content_type=content_type
                    )
            except (DecodeError, TypeError) as exc:
                raise DecodeError(
                    f"retrieve_future {request_id} answered HTTP {status} with an invalid "
                    f"{result_type.__name__}: {exc}"
                ) from None
            slow.reset()
            server.reset()
            answered()
            if isinstance(answer, TryAgainResponse):
                if answer.queue_state != queue_state:
                    queue_state = answer.queue_state
                    _surface_queue_state(
                        request_id, answer, iteration, ids, time.monotonic() - started
                    )
                    if on_queue_state is not None:
                        on_queue_state(answer.queue_state, answer.queue_state_reason)
                if elapsed < _QUICK_ANSWER_S:
                    await sleep(quick.next())
                else:
                    quick.reset()
                continue
            if isinstance(answer, RequestFailedResponse):
                raise RequestFailedError(
                    f"request {request_id} failed ({answer.category}): {answer.error}",
                    request_id=request_id,
                    category=answer.category,
                )
            if isinstance(answer, MetadataOnlyResponse):
                allow_metadata_only = False
                continue
            if not isinstance(answer, result_type):
                raise APIResponseValidationError(
                    f"retrieve_future {request_id}: expected {result_type.__name__}, got "
                    f"{type(answer).__name__}"
                )
            return answer
        if status == 410:
            raise FutureExpiredError(
                f"future {request_id} expired on the server (HTTP 410); resubmit the request",
                status_code=410,
                response=response,
            )
        if status == 429 or status >= 500:
            failed(mask_secrets(f"HTTP {status}: {response.text[:200]}"))
            backoff = slow if status == 429 else server
            await sleep(backoff.next(retry_after_seconds(response.headers)))
            continue
        if status == 400 and bad_requests < 3:
            bad_requests += 1
            await sleep(server.next())
            continue
        if status == 402:
            now = time.monotonic()
            billing_started = billing_started or now
            if now - billing_started < billing_pause_s:
                await sleep(5.0)
                continue
        raise transport.status_error(response, "/api/v1/retrieve_future")


def _try_again_of(body: bytes, request_id: str) -> TryAgainResponse:
    try:
        return decode_json(body, TryAgainResponse)
    except DecodeError:
        return TryAgainResponse(request_id=request_id)


def _surface_queue_state(
    request_id: str,
    answer: TryAgainResponse,
    iteration: int,
    ids: Mapping[str, str | None] | None,
    waited_s: float,
) -> None:
    if answer.queue_state != "active":
        logger.info(
            "request %s is waiting: queue state %s%s",
            request_id,
            answer.queue_state,
            f" ({answer.queue_state_reason})" if answer.queue_state_reason else "",
        )
    events.emit(
        ("tinkjax", "future", "queue_state"),
        {"iteration": iteration, "waited_s": waited_s},
        {
            **(ids or {}),
            "request_id": request_id,
            "queue_state": answer.queue_state,
            "reason": answer.queue_state_reason,
        },
    )
