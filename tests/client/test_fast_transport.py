"""The lean HTTP/1.1 pool (``tinkjax.client._fasthttp``) against scripted loopback servers,
alone and behind the :class:`Transport` choke point (retries, error mapping, events)."""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import httpx
import pytest

from tinkjax import events
from tinkjax.client import Transport
from tinkjax.client._config import resolve_config
from tinkjax.client._fasthttp import FastHTTP, fast_http_applicable
from tinkjax.errors import APIConnectionError, APITimeoutError, NotFoundError

pytestmark = pytest.mark.timeout(60)

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, "Server"], Awaitable[None]]


class Server:
    """A loopback server that runs ``handler`` for every connection and records requests."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        self.first_reads: list[bytes] = []
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Server:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(reader, writer, self)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def read_request(
        self, reader: asyncio.StreamReader
    ) -> tuple[str, str, dict[str, str], bytes]:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        method, target, _ = lines[0].split(" ")
        headers = {
            k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)
        }
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        req = (method, target, headers, body)
        self.requests.append(req)
        return req


def answer(
    status: int, body: bytes = b"", headers: dict[str, str] | None = None, *, length: bool = True
) -> bytes:
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    if length:
        hdrs["Content-Length"] = str(len(body))
    head = f"HTTP/1.1 {status} X\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items())
    return head.encode() + b"\r\n" + body


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, srv: Server) -> None:
    """Keep-alive: answer every request with its method, target and body as JSON."""
    while True:
        method, target, headers, body = await srv.read_request(reader)
        out = json.dumps(
            {"method": method, "target": target, "body": body.decode(), "headers": headers}
        ).encode()
        writer.write(answer(200, out))
        await writer.drain()


def pool(url: str, **kw: Any) -> FastHTTP:
    return FastHTTP(url, connect_timeout=kw.pop("connect_timeout", 5.0), user_agent="test/1")


async def get(
    p: FastHTTP,
    path: str = "/x",
    *,
    method: str = "GET",
    content: bytes | None = None,
    params: dict[str, Any] | None = None,
    timeout: float = 10.0,
) -> httpx.Response:
    url = p.origin + path
    assert p.serves(url)
    return await p.request(
        method,
        url,
        headers={"Accept": "application/json"},
        content=content,
        params=params,
        timeout=timeout,
    )


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(coro)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- pool alone


def test_keepalive_reuses_one_connection_and_sends_head_and_body_together() -> None:
    async def handler(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, srv: Server
    ) -> None:
        while True:
            # The client writes head and body at once, so one read holds the whole request.
            data = await reader.read(65536)
            if not data:
                return
            srv.first_reads.append(data)
            head, _, body = data.partition(b"\r\n\r\n")
            target = head.split(b" ")[1].decode()
            writer.write(
                answer(200, json.dumps({"target": target, "body": body.decode()}).encode())
            )
            await writer.drain()

    async def main() -> None:
        async with Server(handler) as srv:
            p = pool(srv.url)
            for i in range(5):
                r = await get(p, f"/api/v1/n{i}", method="POST", content=f"body{i}".encode())
                assert r.status_code == 200
                assert r.json() == {"target": f"/api/v1/n{i}", "body": f"body{i}"}
                assert r.request.url.path == f"/api/v1/n{i}"
            assert srv.connections == 1
            assert len(srv.first_reads) == 5
            await p.aclose()

    run(main())


def test_request_head_carries_headers_params_and_length() -> None:
    async def main() -> None:
        async with Server(echo) as srv:
            p = pool(srv.url)
            r = await get(p, "/api/v1/runs", params={"limit": 20, "scope": "owned x"})
            got = r.json()
            assert got["method"] == "GET"
            assert got["target"] == "/api/v1/runs?limit=20&scope=owned+x"
            assert got["headers"]["host"] == srv.url.removeprefix("http://")
            assert got["headers"]["user-agent"] == "test/1"
            assert "content-length" not in got["headers"]
            r = await get(p, "/api/v1/empty", method="POST")
            assert r.json()["headers"]["content-length"] == "0"
            with pytest.raises(httpx.LocalProtocolError):
                await p.request(
                    "GET",
                    srv.url + "/x",
                    headers={"X-Evil": "a\r\nInjected: 1"},
                    content=None,
                    params=None,
                    timeout=5,
                )
            await p.aclose()

    run(main())


def test_chunked_body_split_across_writes_with_extensions_and_trailers() -> None:
    async def handler(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, srv: Server
    ) -> None:
        while True:
            await srv.read_request(reader)
            head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            parts = [
                head,
                b"5;ext=1\r\nhel",
                b"lo\r\n",
                b"6\r\n wor",
                b"ld\r\n0\r\n",
                b"X-Trailer: t\r\n\r\n",
            ]
            for part in parts:
                writer.write(part)
                await writer.drain()
                await asyncio.sleep(0.001)

    async def main() -> None:
        async with Server(handler) as srv:
            p = pool(srv.url)
            for _ in range(2):
                r = await get(p)
                assert r.content == b"hello world"
            assert srv.connections == 1  # the chunked answer ended cleanly: reused
            await p.aclose()

    run(main())


def test_body_until_close_informational_and_bodiless_answers() -> None:
    async def handler(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, srv: Server
    ) -> None:
        method, target, _, _ = await srv.read_request(reader)
        if target == "/close":
            writer.write(b"HTTP/1.1 200 OK\r\n\r\nall of it")
            await writer.drain()
            return  # closing ends the body
        while True:
            if target == "/continue":
                writer.write(b"HTTP/1.1 100 Continue\r\n\r\n" + answer(200, b"{}"))
            elif target == "/nocontent":
                writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
            elif method == "HEAD":
                writer.write(answer(200, b"", {"Content-Length": "1234"}, length=False))
            await writer.drain()
            method, target, _, _ = await srv.read_request(reader)

    async def main() -> None:
        async with Server(handler) as srv:
            p = pool(srv.url)
            r = await get(p, "/close")
            assert r.content == b"all of it"
            assert p._idle == collections_deque()  # not reusable: closed
            r = await get(p, "/continue")
            assert (r.status_code, r.content) == (200, b"{}")
            r = await get(p, "/nocontent")
            assert (r.status_code, r.content) == (204, b"")
            r = await get(p, "/head", method="HEAD")
            assert (r.status_code, r.content) == (200, b"")
            assert srv.connections == 2
            await p.aclose()

    run(main())


def collections_deque() -> Any:
    import collections

    return collections.deque()


def test_gzip_answer_is_decoded() -> None:
    async def handler(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, srv: Server
    ) -> None:
        await srv.read_request(reader)
        writer.write(answer(200, gzip.compress(b'{"ok": true}'), {"Content-Encoding": "gzip"}))
        await writer.drain()

    async def main() -> None:
        async with Server(handler) as srv:
            r = await get(pool(srv.url))
            assert r.json() == {"ok": True}

    run(main())


def test_server_closing_idle_connections_and_expiry_open_new_ones() -> None:
    async def handler(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, srv: Server
    ) -> None:
        await srv.read_request(reader)
        writer.write(answer(200, b"{}"))  # keep-alive answer, then the server closes anyway
        await writer.drain()

    async def main() -> None:
        async with Server(handler) as srv:
            p = pool(srv.url)
            for _ in range(3):
                assert (await get(p)).status_code == 200
            assert srv.connections == 3
            await p.aclose()
        async with Server(echo) as srv:
            p = pool(srv.url)
            await get(p)
            p._idle[-1].idle_since -= 60  # past the keep-alive expiry
            await get(p)
            assert srv.connections == 2
            await p.aclose()

    run(main())


def test_failures_raise_httpx_transport_errors() -> None:
    async def handler(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, srv: Server
    ) -> None:
        _, target, _, _ = await srv.read_request(reader)
        if target == "/reset":
            writer.write(answer(200, b'{"partial"')[:-3])
            await writer.drain()
            writer.transport.abort()
        elif target == "/garbage":
            writer.write(b"SPDY/9 what\r\n\r\n")
            await writer.drain()
        elif target == "/silent":
            await asyncio.sleep(30)

    async def main() -> None:
        async with Server(handler) as srv:
            p = pool(srv.url)
            with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
                await get(p, "/reset")
            with pytest.raises(httpx.RemoteProtocolError):
                await get(p, "/garbage")
            with pytest.raises(httpx.ReadTimeout):
                await get(p, "/silent", timeout=0.2)
            assert not p._idle  # no failed connection went back to the pool
            task = asyncio.ensure_future(get(p, "/silent"))
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert not p._idle
            await p.aclose()
        closed = pool(srv.url)
        with pytest.raises(httpx.ConnectError):
            await get(closed)

    run(main())


def test_applicability() -> None:
    assert fast_http_applicable("http://127.0.0.1:8000")
    assert not fast_http_applicable("https://tinker.example")
    assert not fast_http_applicable("http://user:pw@127.0.0.1:8000")
    cfg = resolve_config(base_url="http://127.0.0.1:1", api_key="tml-x", environ={})
    assert Transport(cfg)._fast is not None
    assert Transport(cfg, fast_http=False)._fast is None
    mock = httpx.MockTransport(lambda request: httpx.Response(200))
    assert Transport(cfg, http_transport=mock)._fast is None


def test_connection_cap_queues_requests(monkeypatch: pytest.MonkeyPatch) -> None:
    from tinkjax.client import _fasthttp

    monkeypatch.setattr(_fasthttp, "MAX_CONNECTIONS", 2)

    async def slow_echo(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, srv: Server
    ) -> None:
        while True:
            _, target, _, _ = await srv.read_request(reader)
            await asyncio.sleep(0.01)
            writer.write(answer(200, target.encode()))
            await writer.drain()

    async def main() -> None:
        async with Server(slow_echo) as srv:
            p = pool(srv.url)
            rs = await asyncio.gather(*(get(p, f"/r{i}") for i in range(8)))
            assert [r.content for r in rs] == [f"/r{i}".encode() for i in range(8)]
            assert srv.connections == 2
            await p.aclose()

    run(main())


def test_environment_switch_and_proxy_disable_the_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TINKJAX_FAST_HTTP", "0")
    assert not fast_http_applicable("http://127.0.0.1:8000")
    monkeypatch.delenv("TINKJAX_FAST_HTTP")
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.invalid:3128")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    assert not fast_http_applicable("http://10.1.2.3:8000")
    monkeypatch.setenv("NO_PROXY", "10.1.2.3")
    assert fast_http_applicable("http://10.1.2.3:8000")


# ------------------------------------------------------------------ behind the choke point


@pytest.fixture
def recorded() -> Iterator[list[tuple[tuple[str, ...], dict[str, Any]]]]:
    seen: list[tuple[tuple[str, ...], dict[str, Any]]] = []
    events.attach(
        "fast-recorder",
        ["tinkjax.request.start", "tinkjax.request.stop", "tinkjax.request.exception"],
        lambda n, m, md: seen.append((n, dict(md))),
    )
    yield seen
    events.detach("fast-recorder")


@pytest.fixture(autouse=True)
def quick_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    from tinkjax.client import _backoff

    real = _backoff.backoff_delay
    monkeypatch.setattr(_backoff, "backoff_delay", lambda a, **kw: real(a, **kw) / 100.0)


def transport(url: str, **kw: Any) -> Transport:
    cfg = resolve_config(base_url=url, api_key="tml-FAST-secret", environ={}, **kw)
    t = Transport(cfg)
    assert t._fast is not None
    return t


def test_reset_mid_answer_is_retried_with_the_same_idempotency_key(
    recorded: list[tuple[tuple[str, ...], dict[str, Any]]],
) -> None:
    async def handler(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, srv: Server
    ) -> None:
        while True:
            await srv.read_request(reader)
            if len(srv.requests) == 1:
                writer.write(answer(200, b'{"request_id": "r1"}')[:-5])
                await writer.drain()
                writer.transport.abort()
                return
            writer.write(answer(200, b'{"request_id": "r1"}'))
            await writer.drain()

    async def main() -> None:
        async with Server(handler) as srv:
            t = transport(srv.url)
            r = await t.request("POST", "/api/v1/thing", json={"a": 1})
            assert r.json() == {"request_id": "r1"}
            keys = [h["x-idempotency-key"] for _, _, h, _ in srv.requests]
            assert len(keys) == 2
            assert keys[0] == keys[1]
            assert [h["x-tinkjax-retry-count"] for _, _, h, _ in srv.requests] == ["0", "1"]
            assert srv.requests[0][3] == b'{"a":1}'
            assert srv.requests[0][2]["x-api-key"] == "tml-FAST-secret"
            await t.aclose()

    run(main())
    names = [".".join(n[1:]) for n, _ in recorded]
    assert names == ["request.start", "request.exception", "request.start", "request.stop"]
    assert recorded[1][1]["error_type"] == "APIConnectionError"
    assert recorded[3][1]["retry_count"] == 1
    assert recorded[3][1]["status"] == 200


def test_timeouts_refusals_and_statuses_map_onto_the_error_tree() -> None:
    async def handler(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, srv: Server
    ) -> None:
        while True:
            _, target, _, _ = await srv.read_request(reader)
            if target == "/api/v1/slow":
                await asyncio.sleep(30)
            elif target == "/api/v1/flaky" and len(srv.requests) < 3:
                writer.write(answer(503, b'{"detail": "busy"}'))
            elif target == "/api/v1/flaky":
                writer.write(answer(200, b"{}"))
            else:
                writer.write(answer(404, b'{"detail": "no such thing"}'))
            await writer.drain()

    async def main() -> None:
        async with Server(handler) as srv:
            t = transport(srv.url, max_retries=0)
            with pytest.raises(APITimeoutError, match="timed out"):
                await t.request("GET", "/api/v1/slow", timeout=0.2)
            with pytest.raises(NotFoundError) as info:
                await t.request("GET", "/api/v1/missing")
            assert info.value.status_code == 404
            assert info.value.body == {"detail": "no such thing"}
            assert "tml-FAST-secret" not in str(info.value)
            r = await t.request("GET", "/api/v1/missing", raise_for_status=False)
            assert r.status_code == 404
            retrying = transport(srv.url, max_retries=3)
            assert (await retrying.request("POST", "/api/v1/flaky")).status_code == 200
            await t.aclose()
            await retrying.aclose()
        refused = transport(srv.url, max_retries=1)
        with pytest.raises(APIConnectionError) as err:
            await refused.request("GET", "/api/v1/healthz")
        assert not isinstance(err.value, APITimeoutError)

    run(main())
