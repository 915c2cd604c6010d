"""Connection timeouts, through raw sockets: a request head that does not arrive in time and an
idle keep-alive connection are closed; a request being answered (a long-poll) never is."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from tinkjax.server import ServerHandle, start

from .conftest import KEY_HEADERS, ce_datum, fwdbwd_body, new_model, new_session, post

HEADER_S = 0.3
IDLE_S = 3.0
LONG_POLL_S = 2.0


@pytest.fixture(scope="module")
def timed() -> Iterator[ServerHandle]:
    with start(
        header_timeout_s=HEADER_S, idle_timeout_s=IDLE_S, long_poll_s=LONG_POLL_S,
        seq_gap_timeout_s=60.0,
    ) as srv:  # fmt: skip
        yield srv


def _connect(srv: ServerHandle) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
    return sock


def _closed_within(sock: socket.socket, seconds: float) -> float:
    """Seconds until the server closed ``sock`` (reading only EOF); fails past ``seconds``."""
    t0 = time.monotonic()
    sock.settimeout(seconds)
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        pytest.fail(f"the connection was still open after {seconds} s")
    except ConnectionResetError:
        pass
    return time.monotonic() - t0


def _still_open_after(sock: socket.socket, seconds: float) -> bool:
    sock.settimeout(seconds)
    try:
        return sock.recv(4096) != b""
    except TimeoutError:
        return True


def test_half_sent_request_heads_are_closed(timed: ServerHandle) -> None:
    socks = [_connect(timed) for _ in range(50)]
    for i, sock in enumerate(socks):
        head = b"POST /api/v1/retrieve_future HTTP/1.1\r\nHost: x\r\nContent-Le"
        sock.sendall(head[: 5 + i % 40])
    try:
        for sock in socks:
            assert _closed_within(sock, 10.0) < 10.0
    finally:
        for sock in socks:
            sock.close()


def test_a_connection_that_sends_nothing_is_closed(timed: ServerHandle) -> None:
    with _connect(timed) as sock:
        assert _closed_within(sock, 10.0) >= HEADER_S * 0.9


def test_a_second_request_head_on_a_kept_alive_connection_is_timed_too(
    timed: ServerHandle,
) -> None:
    with _connect(timed) as sock:
        sock.sendall(b"GET /api/v1/healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b"200 OK" in sock.recv(4096)
        sock.sendall(b"GET /api/v1/healthz HTTP/1.1\r\nHo")
        assert _closed_within(sock, IDLE_S - 0.5) < IDLE_S - 0.5  # the head's limit, not idle


def test_an_idle_keep_alive_connection_lasts_the_idle_timeout(timed: ServerHandle) -> None:
    with _connect(timed) as sock:
        sock.sendall(b"GET /api/v1/healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b"200 OK" in sock.recv(4096)
        assert _still_open_after(sock, 1.0)  # well past the head's limit
        assert _closed_within(sock, 10.0) < 10.0


def _head(length: int) -> bytes:
    return (
        "POST /api/v1/client/config HTTP/1.1\r\nHost: x\r\nX-API-Key: tml-test\r\n"
        f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


def test_a_body_that_stops_half_way_is_closed(timed: ServerHandle) -> None:
    with _connect(timed) as sock:
        sock.sendall(_head(100) + b'{"sdk_version": ')
        assert _closed_within(sock, IDLE_S - 0.5) < IDLE_S - 0.5


def test_a_slow_but_steady_body_is_received(timed: ServerHandle) -> None:
    body = b'{"sdk_version": "slow"}' + b" " * 40
    with _connect(timed) as sock:
        sock.sendall(_head(len(body)))
        for i in range(0, len(body), 8):  # ~0.8 s in all, never HEADER_S without a byte
            time.sleep(HEADER_S / 3)
            sock.sendall(body[i : i + 8])
        sock.settimeout(10)
        assert b"200 OK" in sock.recv(4096)


def test_a_long_poll_is_not_cut(timed: ServerHandle) -> None:
    with httpx.Client(base_url=timed.base_url, headers=KEY_HEADERS, timeout=30) as http:
        model = new_model(http, new_session(http))
        # seq 2 waits for seq 1, which never comes (within this test): its future stays pending
        late = post(http, "forward", fwdbwd_body(model, 2, [ce_datum([1, 2, 3])], forward=True))
        t0 = time.monotonic()
        poll = post(http, "retrieve_future", {"request_id": late.json()["request_id"]})
        assert poll.status_code == 408, poll.text
        assert time.monotonic() - t0 >= LONG_POLL_S * 0.9
        # the connection survives and serves the next request
        assert http.get("/api/v1/healthz").status_code == 200


def test_timeouts_must_be_positive() -> None:
    for kwargs in ({"header_timeout_s": 0.0}, {"idle_timeout_s": -1.0}):
        with pytest.raises(ValueError, match="timeout_s"):
            start(**kwargs)  # type: ignore[arg-type]
