"""Connection timeouts of the HTTP server: a request head and its body must arrive in time.

uvicorn closes a keep-alive connection that stays idle after a response
(``timeout_keep_alive``), but nothing bounds how long a client may take to send a request's
head: a connection that sends half a request line and stops stays open for good, and a few
thousand of them hold a file descriptor and a buffer each (1,500 such connections all stayed
open for 40 s before this timeout existed). :func:`timed_h11` adds that bound to uvicorn's h11
protocol:

* from the moment a connection opens, and from the first byte of every later request on it, the
  whole head (request line and headers) must arrive within ``header_timeout_s``, or the
  connection is closed;
* while a request's body is being received, a pause of ``header_timeout_s`` without a byte
  (while the server is ready to read) closes the connection: a body sent slowly but steadily
  is fine, one that stops half-way does not hold the connection and its handler for good;
* between requests an idle connection is closed after uvicorn's ``timeout_keep_alive``.

None of these applies while a request is being answered, so a long-poll that holds its answer
for ``long_poll_s`` is never cut.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["DEFAULT_HEADER_TIMEOUT_S", "DEFAULT_IDLE_TIMEOUT_S", "timed_h11"]

#: How long a client may take to send a request's head.
DEFAULT_HEADER_TIMEOUT_S = 10.0
#: How long a keep-alive connection may stay idle between requests.
DEFAULT_IDLE_TIMEOUT_S = 60.0


def timed_h11(header_timeout_s: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol, closing connections whose request head is late."""
    if not header_timeout_s > 0:
        raise ValueError(f"header_timeout_s: expected > 0, got {header_timeout_s}")
    from uvicorn.protocols.http.h11_impl import H11Protocol  # lazy: uvicorn only to serve

    class TimedH11Protocol(H11Protocol):
        _head_timer: asyncio.TimerHandle | None = None
        _body_timer: asyncio.TimerHandle | None = None

        def _awaiting_head(self) -> bool:
            return self.cycle is None or self.cycle.response_complete

        def _awaiting_body(self) -> bool:
            cycle = self.cycle
            return cycle is not None and not cycle.response_complete and cycle.more_body

        def _rearm_body(self) -> None:
            if self._body_timer is not None:
                self._body_timer.cancel()
                self._body_timer = None
            if self._awaiting_body():
                self._body_timer = self.loop.call_later(header_timeout_s, self._body_late)

        def _body_late(self) -> None:
            self._body_timer = None
            if not self._awaiting_body() or self.transport.is_closing():
                return
            if self.flow.read_paused:  # the handler is behind, not the client
                self._rearm_body()
            else:
                self.transport.close()

        def _arm(self) -> None:
            if self._head_timer is None:
                self._head_timer = self.loop.call_later(header_timeout_s, self._head_late)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_late(self) -> None:
            self._head_timer = None
            if self._awaiting_head() and not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self._awaiting_head():
                self._arm()  # the first bytes of a new request: its head is now due
            else:
                self._disarm()
            self._rearm_body()

        def on_response_complete(self) -> None:
            super().on_response_complete()  # arms uvicorn's idle timer; a pipelined head
            if not self._awaiting_head():  # may have started a new request already
                self._disarm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            if self._body_timer is not None:
                self._body_timer.cancel()
            super().connection_lost(exc)

    return TimedH11Protocol
