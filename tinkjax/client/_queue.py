"""``ModelQueue``: one model's request order (protocol §5).

Every call reserves its ``seq_id``\\ s when it is made (so the server runs requests in call
order), and submissions are POSTed in ``seq_id`` order (the chunks of one call together,
concurrently). A submission that is rejected or cannot be delivered would leave a gap the
server waits on, so its ``seq_id`` is filled with a forward-only no-op; if even that fails the
queue is *poisoned*: later calls raise instead of hanging.

``TrainingClient`` and the custom-loss path (:mod:`._custom`) both send through the queue of
their model; forward/backward chunks are encoded by the session's wire.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np

from tinkjax.codec import WeightedChunk
from tinkjax.errors import APIConnectionError
from tinkjax.types import (
    Datum,
    ForwardBackwardInput,
    ForwardBackwardOutput,
    ForwardBackwardRequest,
    ForwardRequest,
    ModelInput,
    TensorData,
    UntypedAPIFuture,
)

from ._chunking import chunk_counts, chunk_data
from ._session import SessionContext
from ._transport import decode_response

__all__ = ["ModelQueue", "noop_datum"]

logger = logging.getLogger("tinkjax.client")

T = TypeVar("T")

#: A forward/backward chunk: datums, or datums pre-encoded by the wire with their weights.
Chunk = list[Datum] | WeightedChunk


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


class ModelQueue:
    """The ordered submissions of one model of a session.

    Args:
        session: the session the model belongs to (transport, wire, server limits).
        model_id: the model.
        next_seq_id: the first ``seq_id`` to reserve.
    """

    def __init__(self, session: SessionContext, model_id: str, *, next_seq_id: int = 1) -> None:
        self.session = session
        self.model_id = model_id
        self._seq_lock = threading.Lock()
        self._next_seq = next_seq_id
        self._turn = next_seq_id
        self._turn_cond: asyncio.Condition | None = None
        self._poisoned: BaseException | None = None

    def __repr__(self) -> str:
        return f"ModelQueue(model_id={self.model_id!r})"

    @property
    def ids(self) -> dict[str, str | None]:
        """The ids the model's requests carry in their events."""
        return self.session.ids(model_id=self.model_id)

    @property
    def next_seq_id(self) -> int:
        """The ``seq_id`` the next reservation starts at."""
        return self._next_seq

    # ------------------------------------------------------------ reservation, chunking
    def reserve(self, n: int) -> list[int]:
        """Reserve ``n`` consecutive ``seq_id``\\ s now (call order = server order)."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        with self._seq_lock:
            first = self._next_seq
            self._next_seq += n
        return list(range(first, first + n))

    def chunk(self, data: Sequence[Datum]) -> list[list[Datum]]:
        """Split a batch into requests (≤ the server's datum and byte limits)."""
        cfg = self.session.server_config
        return chunk_data(
            data, max_len=cfg.fwdbwd_max_chunk_len, max_bytes=cfg.fwdbwd_max_chunk_bytes_count
        )

    def chunk_counts(self, sizes: Sequence[int]) -> list[int]:
        """Datums per request for datums of ``sizes`` bytes (the server's limits)."""
        cfg = self.session.server_config
        return chunk_counts(
            sizes, max_len=cfg.fwdbwd_max_chunk_len, max_bytes=cfg.fwdbwd_max_chunk_bytes_count
        )

    # ------------------------------------------------------------ sending
    async def send_fwdbwd(
        self,
        chunks: Sequence[Chunk],
        seq_ids: Sequence[int],
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
            self.session.poll(
                ack.request_id, ForwardBackwardOutput, request_type=request_type, ids=self.ids
            )
            for ack in acks
        ]
        if len(polls) == 1:  # no task per poll for the common single-chunk call
            return [await polls[0]]
        return list(await asyncio.gather(*polls))

    async def release(self, seq_ids: list[int]) -> None:
        """Consume reserved ids with forward-only no-ops (their real requests will not be
        sent), so later requests are not blocked. Never raises: a failure is logged."""
        try:
            await self.send_fwdbwd(
                [[noop_datum()] for _ in seq_ids],
                seq_ids,
                loss_fn="cross_entropy",
                loss_fn_config=None,
                forward_only=True,
            )
        except Exception:  # the caller's own error is what the user needs to see
            logger.warning("could not release reserved seq ids %s", seq_ids, exc_info=True)

    async def call(
        self, seq_id: int, path: str, body: Any, result_type: type[T], request_type: str
    ) -> T:
        """POST ``body`` to ``path`` in the turn of ``seq_id``; await its result."""
        (ack,) = await self._submit_in_turn([seq_id], [lambda: self._post(path, body)])
        return await self.session.poll(
            ack.request_id, result_type, request_type=request_type, ids=self.ids
        )

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
                    f"TrainingClient(model_id={self.model_id!r}) is unusable: an earlier "
                    f"request was never delivered "
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
        delivered the queue is poisoned: later calls raise instead of hanging.
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

    # ------------------------------------------------------------ posting
    async def _post(self, path: str, body: Any) -> UntypedAPIFuture:
        resp = await self.session.transport.request("POST", path, json=body, ids=self.ids)
        return decode_response(resp, UntypedAPIFuture)

    async def _post_fwdbwd(
        self,
        chunk: Chunk,
        seq_id: int,
        loss_fn: str,
        loss_fn_config: dict[str, float | str] | None,
        forward_only: bool,
    ) -> UntypedAPIFuture:
        wire = self.session.wire
        if isinstance(chunk, WeightedChunk):  # pre-encoded datums (forward_backward_custom)
            if loss_fn_config:
                raise ValueError("pre-encoded chunks are sent without a loss_fn_config")
            encoded = wire.encode_weighted(
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
            encoded = wire.encode_fwdbwd(request)
        resp = await self.session.transport.request(
            "POST",
            encoded.path,
            content=encoded.body,
            content_type=encoded.content_type,
            ids=self.ids,
        )
        return decode_response(resp, UntypedAPIFuture)
