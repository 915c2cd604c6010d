"""A lean asyncio HTTP/1.1 client for plain ``http://`` services (the local backend, loopback).

httpx's pure-Python stack (httpx → httpcore → h11 → anyio) is most of a request's client time
on loopback, and its connection pool rescans every connection for every queued request, so a
50-way sampling fan-out spends milliseconds of CPU per request. This module does only what the
SDK needs:

* keep-alive connections kept in a LIFO deque (idle ones expire after 5 s, like httpx's
  default, and each is polled for a pending close before it is reused, as httpcore does);
* the request head built in one pass and written together with the body in one ``write``;
* an incremental parser (an :class:`asyncio.Protocol`, no streams, no extra tasks) of the
  status line, the headers and a ``Content-Length``, chunked or read-until-close body;
* a read timeout that, like httpx's, bounds the silence between two reads.

:class:`~._transport.Transport` uses it for ``http://`` base URLs when no custom
``http_transport`` is given and no proxy from the environment applies (see
:func:`fast_http_applicable`); httpx keeps https, HTTP/2, proxies, streaming downloads and
custom transports. Failures are raised as the matching httpx exceptions
(``ConnectError``, ``ConnectTimeout``, ``ReadError``, ``ReadTimeout``,
``RemoteProtocolError``), so the choke point retries and maps them exactly as before, and
answers are returned as ordinary :class:`httpx.Response` objects.
"""

from __future__ import annotations

import asyncio
import collections
import os
import select
import time
import urllib.request
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import httpx

__all__ = ["FastHTTP", "fast_http_applicable"]

#: Idle connections older than this are closed instead of reused (httpx's default expiry).
KEEPALIVE_EXPIRY_S = 5.0
#: At most this many idle connections are kept.
MAX_IDLE = 100
#: At most this many connections are open at once (httpx's limit in the transport); more
#: concurrent requests wait for one to be released.
MAX_CONNECTIONS = 1000
#: Largest accepted response head (status line and headers).
_MAX_HEAD = 64 * 1024
#: Bodies up to this size are joined to the head and sent in one ``write``.
_JOIN_BODY = 256 * 1024
_URL_CACHE_MAX = 512

_HEAD, _LENGTH, _CHUNKED, _UNTIL_CLOSE = 0, 1, 2, 3
_Raw = tuple[int, list[tuple[bytes, bytes]], bytes]


def fast_http_applicable(base_url: str) -> bool:
    """Whether :class:`FastHTTP` may serve ``base_url``.

    It must be plain ``http://`` without credentials in the URL, no proxy configured in the
    environment (``HTTP_PROXY``/``ALL_PROXY``) may apply to its host (httpx would route
    through it), and ``TINKJAX_FAST_HTTP`` must not be ``0``/``false``/``no``/``off``.
    """
    if not base_url.startswith("http://"):
        return False
    if os.environ.get("TINKJAX_FAST_HTTP", "").strip().lower() in ("0", "false", "no", "off"):
        return False
    parts = urlsplit(base_url)
    if "@" in parts.netloc or not parts.hostname:
        return False
    proxies = urllib.request.getproxies_environment()
    if not (proxies.get("http") or proxies.get("all")):
        return True
    return bool(urllib.request.proxy_bypass(parts.hostname))


class _Connection(asyncio.Protocol):
    """One keep-alive connection; parses the answer of the request in flight."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self._poll: select.poll | None = None
        self.closed = False
        self.idle_since = 0.0
        self._buf = bytearray()
        self._waiter: asyncio.Future[_Raw] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timeout = 0.0
        self._last_io = 0.0
        self._no_body = False
        self._reset()

    def _reset(self) -> None:
        self._mode = _HEAD
        self._status = 0
        self._headers: list[tuple[bytes, bytes]] = []
        self._remaining = 0
        self._chunks: list[bytes] = []
        self._keep_alive = True
        self._got_bytes = False

    # ------------------------------------------------------------ asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            self._poll = select.poll()
            self._poll.register(sock.fileno(), select.POLLIN)

    def data_received(self, data: bytes) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            self.abort()  # bytes nobody asked for: the connection is unusable
            return
        self._last_io = self.loop.time()
        self._got_bytes = True
        self._buf += data
        try:
            self._parse()
        except httpx.RemoteProtocolError as exc:
            self._fail(exc)

    def eof_received(self) -> bool:
        self.closed = True
        if self._waiter is not None and not self._waiter.done():
            if self._mode == _UNTIL_CLOSE:
                self._chunks.append(bytes(self._buf))
                self._buf.clear()
                self._keep_alive = False
                self._finish(b"".join(self._chunks))
            elif self._got_bytes:
                self._fail(
                    httpx.RemoteProtocolError(
                        "peer closed connection without sending complete message body"
                    )
                )
            else:
                self._fail(
                    httpx.RemoteProtocolError("Server disconnected without sending a response.")
                )
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is not None and not self._waiter.done():
            if exc is None:
                self._fail(
                    httpx.RemoteProtocolError("Server disconnected without sending a response.")
                )
            else:
                self._fail(httpx.ReadError(f"{type(exc).__name__}: {exc}"))

    # ------------------------------------------------------------ requests
    def send(
        self, data: bytes, body: bytes | None, *, no_body: bool, timeout: float
    ) -> asyncio.Future[_Raw]:
        """Write one request; the future resolves to ``(status, headers, body)``."""
        assert self.transport is not None
        self._reset()
        self._no_body = no_body
        waiter: asyncio.Future[_Raw] = self.loop.create_future()
        self._waiter = waiter
        self._timeout = timeout
        self._last_io = now = self.loop.time()
        self._timer = self.loop.call_at(now + timeout, self._on_timer)
        if body is None:
            self.transport.write(data)
        elif len(body) <= _JOIN_BODY:
            self.transport.write(data + body)
        else:
            self.transport.write(data)
            self.transport.write(body)
        return waiter

    def readable(self) -> bool:
        """Whether an idle connection has bytes or an EOF waiting (the server closed it)."""
        if self._poll is None:
            return True
        try:
            return bool(self._poll.poll(0))
        except OSError:
            return True

    @property
    def keep_alive(self) -> bool:
        """Whether the connection can carry another request."""
        return self._keep_alive and not self.closed and not self._buf

    def _on_timer(self) -> None:
        self._timer = None
        if self._waiter is None or self._waiter.done():
            return
        due = self._last_io + self._timeout
        if self.loop.time() < due:
            self._timer = self.loop.call_at(due, self._on_timer)
            return
        self._fail(httpx.ReadTimeout(f"no answer within {self._timeout:g} s"))

    def _finish(self, body: bytes) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result((self._status, self._headers, body))

    def _fail(self, exc: Exception) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.abort()
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def abort(self) -> None:
        """Drop the connection at once."""
        self.closed = True
        self._keep_alive = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.transport is not None:
            self.transport.abort()

    # ------------------------------------------------------------ parsing
    def _parse(self) -> None:
        buf = self._buf
        while True:
            if self._mode == _HEAD:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(buf) > _MAX_HEAD:
                        raise httpx.RemoteProtocolError("response head too large")
                    return
                head = bytes(buf[:end])
                del buf[: end + 4]
                if not self._parse_head(head):
                    continue  # an informational 1xx answer: the real one follows
            if self._mode == _LENGTH:
                n = self._remaining
                if len(buf) < n:
                    return
                if len(buf) == n:
                    body = bytes(buf)
                    buf.clear()
                else:
                    body = bytes(buf[:n])
                    del buf[:n]
                    self._keep_alive = False  # pipelined garbage: do not reuse
                self._finish(body)
                return
            if self._mode == _CHUNKED:
                if self._parse_chunks():
                    self._finish(b"".join(self._chunks))
                return
            return  # _UNTIL_CLOSE: eof_received finishes

    def _parse_head(self, head: bytes) -> bool:
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
            raise httpx.RemoteProtocolError(f"malformed status line {lines[0][:100]!r}")
        try:
            status = int(parts[1])
        except ValueError:
            raise httpx.RemoteProtocolError(f"malformed status line {lines[0][:100]!r}") from None
        if 100 <= status < 200:
            return False
        headers: list[tuple[bytes, bytes]] = []
        length: int | None = None
        chunked = False
        connection = b""
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep or not name or name != name.strip():
                raise httpx.RemoteProtocolError(f"malformed header line {line[:100]!r}")
            value = value.strip()
            headers.append((name, value))
            low = name.lower()
            if low == b"content-length":
                try:
                    n = int(value)
                except ValueError:
                    raise httpx.RemoteProtocolError(
                        f"malformed Content-Length {value[:50]!r}"
                    ) from None
                if n < 0 or (length is not None and length != n):
                    raise httpx.RemoteProtocolError(f"bad Content-Length {value[:50]!r}")
                length = n
            elif low == b"transfer-encoding":
                chunked = value.lower().endswith(b"chunked")
            elif low == b"connection":
                connection = value.lower()
        self._status = status
        self._headers = headers
        if parts[0] == b"HTTP/1.1":
            self._keep_alive = b"close" not in connection
        else:
            self._keep_alive = b"keep-alive" in connection
        if self._no_body or status in (204, 304):
            self._mode, self._remaining = _LENGTH, 0
        elif chunked:
            self._mode = _CHUNKED
        elif length is not None:
            self._mode, self._remaining = _LENGTH, length
        else:
            self._mode = _UNTIL_CLOSE
            self._keep_alive = False
        return True

    def _parse_chunks(self) -> bool:
        """Consume whole chunks from the buffer; true once the last one (and trailers) is in."""
        buf = self._buf
        while True:
            eol = buf.find(b"\r\n")
            if eol < 0:
                if len(buf) > _MAX_HEAD:
                    raise httpx.RemoteProtocolError("chunk size line too long")
                return False
            size_field = bytes(buf[:eol]).split(b";", 1)[0].strip()
            try:
                size = int(size_field, 16)
            except ValueError:
                raise httpx.RemoteProtocolError(
                    f"malformed chunk size {size_field[:50]!r}"
                ) from None
            if size < 0:
                raise httpx.RemoteProtocolError(f"malformed chunk size {size_field[:50]!r}")
            if size == 0:
                rest = eol + 2
                if buf[rest : rest + 2] == b"\r\n":  # no trailers
                    del buf[: rest + 2]
                    return True
                end = buf.find(b"\r\n\r\n", rest)
                if end < 0:
                    return False
                del buf[: end + 4]
                return True
            start = eol + 2
            if len(buf) < start + size + 2:
                return False
            if buf[start + size : start + size + 2] != b"\r\n":
                raise httpx.RemoteProtocolError("chunk not terminated by CRLF")
            self._chunks.append(bytes(buf[start : start + size]))
            del buf[: start + size + 2]


class FastHTTP:
    """A keep-alive connection pool to one ``http://`` origin, used on one event loop.

    Args:
        base_url: the service root (``http://host:port[/prefix]``).
        connect_timeout: seconds to establish a connection.
        user_agent: the ``User-Agent`` header.
    """

    def __init__(self, base_url: str, *, connect_timeout: float, user_agent: str) -> None:
        parts = urlsplit(base_url)
        self.origin = f"{parts.scheme}://{parts.netloc}"
        self._host = parts.hostname or ""
        self._port = parts.port or 80
        self._connect_timeout = connect_timeout
        self._prefix = f"Host: {parts.netloc}\r\nUser-Agent: {user_agent}\r\n"
        self._idle: collections.deque[_Connection] = collections.deque()
        self._conns: set[_Connection] = set()
        self._opening = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._urls: dict[tuple[str, str], tuple[httpx.URL, httpx.Request]] = {}
        self.closed = False

    def __repr__(self) -> str:
        return f"FastHTTP(origin={self.origin!r}, idle={len(self._idle)})"

    def serves(self, url: str) -> bool:
        """Whether ``url`` belongs to this pool's origin (and this loop may use the pool)."""
        if self.closed or not url.startswith(self.origin):
            return False
        rest = url[len(self.origin) : len(self.origin) + 1]
        if rest not in ("", "/", "?"):
            return False
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        return loop is self._loop

    def _request_of(
        self, method: str, url: str, params: Mapping[str, Any] | None
    ) -> tuple[httpx.URL, httpx.Request]:
        if params:
            u = httpx.URL(url).copy_merge_params(dict(params))
            return u, httpx.Request(method, u)
        key = (method, url)
        hit = self._urls.get(key)
        if hit is None:
            if len(self._urls) >= _URL_CACHE_MAX:
                self._urls.clear()
            u = httpx.URL(url)
            # Shared by the answers of this method and URL; it carries no headers (no key).
            hit = self._urls[key] = (u, httpx.Request(method, u))
        return hit

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        content: bytes | None,
        params: Mapping[str, Any] | None,
        timeout: float,
    ) -> httpx.Response:
        """Send one request and read the whole answer (no retries: the caller retries).

        Raises:
            httpx.TransportError: ``ConnectError``/``ConnectTimeout`` (no connection),
                ``ReadError``/``RemoteProtocolError`` (connection lost or a malformed answer),
                ``ReadTimeout`` (no byte for ``timeout`` seconds).
        """
        url_obj, request = self._request_of(method, url, params)
        lines = [f"{method} {url_obj.raw_path.decode('ascii')} HTTP/1.1\r\n", self._prefix]
        for name, value in headers.items():
            if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
                raise httpx.LocalProtocolError(f"illegal header {name!r}")
            lines.append(f"{name}: {value}\r\n")
        if content is not None:
            lines.append(f"Content-Length: {len(content)}\r\n\r\n")
        elif method in ("POST", "PUT", "PATCH"):
            lines.append("Content-Length: 0\r\n\r\n")
        else:
            lines.append("\r\n")
        data = "".join(lines).encode("ascii")
        conn = self._take_idle() or await self._acquire()
        waiter = conn.send(data, content, no_body=method == "HEAD", timeout=timeout)
        try:
            status, raw_headers, body = await waiter
        except BaseException:
            self._drop(conn)
            raise
        self._release(conn)
        response = httpx.Response(
            status, headers=raw_headers, stream=httpx.ByteStream(body), request=request
        )
        if response.headers.get("content-encoding", "identity") == "identity":
            response._content = body  # already whole: skip httpx's decode pipeline
        else:
            response.read()  # gzip, deflate, ...: httpx's decoders
        return response

    def _take_idle(self) -> _Connection | None:
        idle = self._idle
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            age = now - conn.idle_since
            if conn.closed or age > KEEPALIVE_EXPIRY_S or conn.readable():
                self._drop(conn)
                continue
            return conn
        return None

    def _release(self, conn: _Connection) -> None:
        if conn.keep_alive and not self.closed and len(self._idle) < MAX_IDLE:
            conn.idle_since = time.monotonic()
            self._idle.append(conn)
            self._wake()
        else:
            self._drop(conn)

    def _drop(self, conn: _Connection) -> None:
        conn.abort()
        self._conns.discard(conn)
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return

    async def _acquire(self) -> _Connection:
        """An idle connection, else a new one once fewer than ``MAX_CONNECTIONS`` are open."""
        loop = asyncio.get_running_loop()
        while len(self._conns) + self._opening >= MAX_CONNECTIONS:
            fut: asyncio.Future[None] = loop.create_future()
            self._waiters.append(fut)
            try:
                await fut
            except asyncio.CancelledError:
                if fut.done() and not fut.cancelled():
                    self._wake()  # pass the wake-up on to the next waiter
                raise
            conn = self._take_idle()
            if conn is not None:
                return conn
        self._opening += 1
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: _Connection(loop), self._host, self._port
                )
        except TimeoutError:
            raise httpx.ConnectTimeout(
                f"no connection to {self.origin} within {self._connect_timeout:g} s"
            ) from None
        except OSError as exc:
            raise httpx.ConnectError(f"{type(exc).__name__}: {exc}") from exc
        finally:
            self._opening -= 1
            if len(self._conns) + self._opening < MAX_CONNECTIONS:
                self._wake()
        self._conns.add(conn)
        return conn

    async def aclose(self) -> None:
        """Close every connection (requests in flight fail with ``ReadError``)."""
        self.closed = True
        self._idle.clear()
        for conn in list(self._conns):
            conn.abort()
        self._conns.clear()
        self._wake()
