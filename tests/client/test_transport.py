"""The API key goes to the service's own origin only: two loopback HTTP servers record the
headers they get while the :class:`Transport` streams, follows redirects and sends requests."""

from __future__ import annotations

import asyncio
import http.server
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from tinkjax.client import Transport
from tinkjax.client._config import resolve_config
from tinkjax.client._transport import origin_of

from .conftest import API_KEY

pytestmark = pytest.mark.timeout(60)


class Recorder(http.server.ThreadingHTTPServer):
    """Answers ``/to?<url>`` with a 302 to ``<url>``, anything else with 200 ``ok``; records
    ``(path, X-API-Key or None)`` of every request."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str | None]] = []
        super().__init__(("127.0.0.1", 0), _Handler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: Recorder

    def do_GET(self) -> None:
        self.server.seen.append((self.path, self.headers.get("X-API-Key")))
        if self.path.startswith("/to?"):
            self.send_response(302)
            self.send_header("Location", self.path[len("/to?") :])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def servers() -> Iterator[tuple[Recorder, Recorder]]:
    pair = (Recorder(), Recorder())
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in pair]
    for t in threads:
        t.start()
    yield pair
    for s in pair:
        s.shutdown()
        s.server_close()


def _transport(base_url: str) -> Transport:
    return Transport(resolve_config(base_url=base_url, api_key=API_KEY, max_retries=0))


async def _stream(transport: Transport, url: str) -> bytes:
    try:
        async with transport.stream(url) as response:
            return await response.aread()
    finally:
        await transport.aclose()


def test_origin_is_scheme_host_and_port_with_defaults() -> None:
    assert origin_of("http://Example.COM/x") == origin_of("http://example.com:80/y")
    assert origin_of("https://example.com") == ("https", "example.com", 443)
    assert origin_of("http://127.0.0.1:4000@127.0.0.1:5000/a") == ("http", "127.0.0.1", 5000)
    assert origin_of("http://h:4000") != origin_of("http://h:40001")
    assert origin_of("http://h:443") != origin_of("https://h:443")


def test_stream_to_a_userinfo_url_does_not_send_the_key(
    servers: tuple[Recorder, Recorder],
) -> None:
    own, other = servers
    host_port = own.url.removeprefix("http://")
    trick = f"http://{host_port}@{other.url.removeprefix('http://')}/weights.tar.gz"
    assert asyncio.run(_stream(_transport(own.url), trick)) == b"ok"
    assert other.seen == [("/weights.tar.gz", None)]


def test_stream_to_a_port_sharing_the_prefix_does_not_send_the_key(
    servers: tuple[Recorder, Recorder],
) -> None:
    _, other = servers
    base = other.url[:-1]  # port 40001 → base port 4000: a string prefix, another origin
    assert asyncio.run(_stream(_transport(base), other.url + "/a")) == b"ok"
    assert other.seen == [("/a", None)]


def test_redirect_hops_carry_the_key_only_on_the_own_origin(
    servers: tuple[Recorder, Recorder],
) -> None:
    own, other = servers
    # own → own → other → own: the key stays on the first two hops, and once it left the
    # origin it is not sent again
    back = f"{own.url}/back"
    leave = f"/to?{other.url}/to?{back}"
    assert asyncio.run(_stream(_transport(own.url), f"/to?{own.url}{leave}")) == b"ok"
    assert own.seen[:2] == [(f"/to?{own.url}{leave}", API_KEY), (leave, API_KEY)]
    assert other.seen == [(f"/to?{back}", None)]
    assert own.seen[2:] == [("/back", None)]


def test_request_to_another_origin_does_not_send_the_key(
    servers: tuple[Recorder, Recorder],
) -> None:
    own, other = servers
    trick = f"http://{own.url.removeprefix('http://')}@{other.url.removeprefix('http://')}/x"

    async def main() -> None:
        transport = _transport(own.url)
        try:
            await transport.request("GET", f"{own.url}/mine")
            await transport.request("GET", trick)
            await transport.request("GET", other.url[:-1] + other.url[-1] + "/y")
        finally:
            await transport.aclose()

    asyncio.run(main())
    assert own.seen == [("/mine", API_KEY)]
    assert other.seen == [("/x", None), ("/y", None)]
