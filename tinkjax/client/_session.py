"""``SessionContext``: what every client of one session shares, handed down by ``ServiceClient``.

The context owns the transport, the resolved configuration, the wire (chosen once from the
configuration's ``wire_mode``), the server's feature flags (``/client/config``), the session
(created in the background as soon as the context exists) with its heartbeat, and the
session-wide counters (``model_seq_id``, ``sampling_session_seq_id``). Training, sampling and
REST clients and the custom-loss path take it (or the part they need) instead of the
``ServiceClient``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Literal, TypeVar

from tinkjax import events
from tinkjax._version import __version__
from tinkjax.codec import Wire, wire_for
from tinkjax.errors import APIError, APIStatusError, NotFoundError
from tinkjax.types import (
    ClientConfigRequest,
    ClientConfigResponse,
    CreateSessionRequest,
    CreateSessionResponse,
    SessionFinishReason,
    SessionFinishRequest,
    SessionHeartbeatRequest,
)

from ._config import ClientConfig
from ._loop import submit, warn_if_in_loop
from ._paths import id_segment
from ._polling import Decoder, poll_future
from ._transport import Transport, decode_response

if TYPE_CHECKING:
    from ._telemetry import TelemetryReporter

__all__ = ["FinishStatus", "SessionContext"]

logger = logging.getLogger("tinkjax.client")

T = TypeVar("T")

FinishStatus = Literal["success", "errored", "interrupted"]

#: Heartbeat failures are only reported after this long without a successful one.
_HEARTBEAT_GRACE_S = 120.0
#: Retries of ``/sessions/{id}/finish`` on close (a server that is gone should not hold the
#: caller for the full transport budget: ~1.5 s, not ~1 min).
_FINISH_RETRIES = 2
#: Read timeout of each finish try, seconds (a server that accepts but never answers).
_FINISH_TIMEOUT_S = 10.0


class SessionContext:
    """One session on one service: transport, configuration, wire, server config, session id
    and heartbeat, counters.

    Creating it starts creating the session on the client loop; :meth:`get_session_id`
    waits for it (and raises its error if creating it failed).

    Args:
        config: the resolved configuration (an embedded backend already started).
        transport: the HTTP choke point (owned: :meth:`close` closes it).
        display_name: sent with ``create_session``.
        heartbeat_interval: seconds between heartbeats (``<= 0``: none).

    Attributes:
        config: the resolved configuration.
        transport: the session's :class:`Transport`.
        wire: the protocol generation every request of the session uses.
        server_config: the server's feature flags and limits (defaults until the session
            exists, or when the server has no ``/client/config``).
        telemetry: the session's telemetry reporter, set by ``ServiceClient`` (``None``
            when telemetry is off); what the clients' ``get_telemetry()`` return.
    """

    def __init__(
        self,
        config: ClientConfig,
        transport: Transport,
        *,
        display_name: str | None = None,
        heartbeat_interval: float = 10.0,
    ) -> None:
        self.config = config
        self.transport = transport
        self.wire: Wire = wire_for(config.wire_mode)
        self.server_config = ClientConfigResponse()
        self.telemetry: TelemetryReporter | None = None
        self._display_name = display_name
        self._heartbeat_interval = heartbeat_interval
        self._lock = threading.Lock()
        self._model_seq = 0
        self._sampling_seq = 0
        self._custom_loss_seq = 0
        self.closed = False
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._session_future: concurrent.futures.Future[str] = submit(self._start())

    def __repr__(self) -> str:
        return f"SessionContext(base_url={self.config.base_url!r}, session_id={self.session_id_if_ready!r})"

    # ---------------------------------------------------------------- the session id
    @property
    def session_id_if_ready(self) -> str | None:
        """The session id once the session exists, else ``None``."""
        f = self._session_future
        if f.done() and not f.cancelled() and f.exception() is None:
            return f.result()
        return None

    def session_id(self) -> str:
        """The session id (blocks until the session exists)."""
        if not self._session_future.done():
            warn_if_in_loop("ServiceClient.session_id", "`await session.get_session_id()`")
        return self._session_future.result()

    async def get_session_id(self) -> str:
        """The session id (waits for the session to be created).

        Raises:
            RuntimeError: the session is closed.
        """
        self.check_open()
        return await asyncio.wrap_future(self._session_future)

    def ids(self, **extra: str | None) -> dict[str, str | None]:
        """The ids a request's events carry: the session's and ``extra`` (a model's, ...)."""
        return {"session_id": self.session_id_if_ready, **extra}

    def check_open(self) -> None:
        """Raises ``RuntimeError`` once the session is closed."""
        if self.closed:
            raise RuntimeError("ServiceClient is closed")

    # ---------------------------------------------------------------- counters
    def next_model_seq(self) -> int:
        """The next ``model_seq_id`` of the session (``create_model``, ``load_weights``)."""
        with self._lock:
            seq = self._model_seq
            self._model_seq += 1
            return seq

    def next_custom_loss_seq(self) -> int:
        """The next ``custom_loss_seq_id`` of the session (``create_custom_loss``)."""
        with self._lock:
            seq = self._custom_loss_seq
            self._custom_loss_seq += 1
            return seq

    def next_sampling_seq(self) -> int:
        """The next ``sampling_session_seq_id`` of the session."""
        with self._lock:
            seq = self._sampling_seq
            self._sampling_seq += 1
            return seq

    # ---------------------------------------------------------------- futures
    async def poll(
        self,
        request_id: str,
        result_type: type[T],
        *,
        request_type: str,
        ids: Mapping[str, str | None] | None = None,
        timeout: float | None = None,
        decode: Decoder | None = None,
        on_queue_state: Callable[[str, str | None], None] | None = None,
    ) -> T:
        """:func:`~._polling.poll_future` over this session's transport and wire."""
        return await poll_future(
            self.transport,
            request_id,
            result_type,
            wire=self.wire,
            request_type=request_type,
            ids=ids,
            timeout=timeout,
            decode=decode,
            on_queue_state=on_queue_state,
        )

    # ---------------------------------------------------------------- start, heartbeat
    async def _start(self) -> str:
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
        if self._heartbeat_interval > 0 and not self.closed:
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
                reported = _heartbeat_failed(session_id, last_ok, exc, reported)
            except APIError as exc:
                reported = _heartbeat_failed(session_id, last_ok, exc, reported)
            else:
                last_ok = time.monotonic()
                reported = False

    # ---------------------------------------------------------------- close
    async def close(self, status: FinishStatus, detail: str | None) -> None:
        """Stop heartbeats, finish the session (``/sessions/{id}/finish``) if it was created,
        close the transport. Runs on the client loop; a second call does nothing.

        Never raises: a session that cannot be finished (the server is gone, or no longer
        knows it) is logged as a warning, so closing never replaces an exception in flight
        (``with`` blocks). The finish request is tried at most 3 times, 10 s each.
        """
        if self.closed:
            return
        self.closed = True
        if self._heartbeat_task is not None:
            self._heartbeat_task.cancel()
        try:
            try:
                session_id = await asyncio.wrap_future(self._session_future)
            except Exception:
                return  # no session was created: nothing to finish
            await self.transport.request(
                "POST",
                f"/api/v1/sessions/{id_segment(session_id, 'session_id')}/finish",
                json=SessionFinishRequest(reason=SessionFinishReason(type=status), detail=detail),
                ids={"session_id": session_id},
                max_retries=min(self.config.max_retries, _FINISH_RETRIES),
                timeout=min(self.config.timeout, _FINISH_TIMEOUT_S),
            )
        except Exception as exc:
            logger.warning(
                "could not finish session %s (%s); closing anyway: %s",
                self.session_id_if_ready,
                status,
                exc,
            )
        finally:
            try:
                await self.transport.aclose()
            except Exception as exc:  # a broken connection must not fail the close either
                logger.warning("closing the connections failed: %s", exc)


def _heartbeat_failed(session_id: str, last_ok: float, exc: Exception, reported: bool) -> bool:
    """Report a failing heartbeat once, after the grace period; return whether reported."""
    since = time.monotonic() - last_ok
    if since < _HEARTBEAT_GRACE_S or reported:
        return reported
    logger.warning("no successful heartbeat for session %s in %.0f s: %s", session_id, since, exc)
    events.emit(
        ("tinkjax", "session", "heartbeat_failed"),
        {"since_success_s": since},
        {"session_id": session_id},
    )
    return True
