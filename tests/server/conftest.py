"""Shared fixtures: one local server per test session (micro model), plus raw HTTP helpers."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tinkjax.server import ServerHandle, start

MICRO = "tinkjax/bytelm-micro"
#: The key raw HTTP tests send (the server accepts any well-formed key as its own tenant).
API_KEY = "tml-test"
KEY_HEADERS = {"X-API-Key": API_KEY}


@pytest.fixture(scope="session")
def server() -> Iterator[ServerHandle]:
    """A server with short timeouts so pending-request paths are quick to test."""
    handle = start(seq_gap_timeout_s=30.0, long_poll_s=2.0, max_body_bytes=4 * 2**20)
    try:
        yield handle
    finally:
        handle.stop()


@pytest.fixture(scope="session")
def http(server: ServerHandle) -> Iterator[httpx.Client]:
    """A raw HTTP client on the server."""
    with httpx.Client(base_url=server.base_url, headers=KEY_HEADERS, timeout=60) as client:
        yield client


@pytest.fixture(scope="session")
def sdk_env(server: ServerHandle) -> Iterator[None]:
    """Environment for the official SDK pointed at the server."""
    old = {k: os.environ.get(k) for k in ("TINKER_BASE_URL", "TINKER_API_KEY", "TINKER_TELEMETRY")}
    os.environ.update(TINKER_BASE_URL=server.base_url, TINKER_API_KEY=API_KEY, TINKER_TELEMETRY="0")
    try:
        yield
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def post(http: httpx.Client, path: str, body: Any, **kwargs: Any) -> httpx.Response:
    """POST JSON (or raw bytes) to ``/api/v1/{path}``."""
    if isinstance(body, bytes | str):
        return http.post(f"/api/v1/{path}", content=body, **kwargs)
    return http.post(f"/api/v1/{path}", json=body, **kwargs)


def result(http: httpx.Client, request_id: str, *, tries: int = 60) -> httpx.Response:
    """Poll ``retrieve_future`` until it is no longer 408."""
    for _ in range(tries):
        r = post(http, "retrieve_future", {"request_id": request_id})
        if r.status_code != 408:
            return r
    raise AssertionError(f"request {request_id} still pending")


def new_session(http: httpx.Client) -> str:
    r = post(
        http, "create_session",
        {"tags": [], "user_metadata": {}, "sdk_version": "test", "type": "create_session"},
    )  # fmt: skip
    assert r.status_code == 200, r.text
    return str(r.json()["session_id"])


def new_model(http: httpx.Client, session_id: str, seq: int = 0, rank: int = 4, **lora: Any) -> str:
    r = post(
        http,
        "create_model",
        {
            "session_id": session_id,
            "model_seq_id": seq,
            "base_model": MICRO,
            "lora_config": {"rank": rank, "seed": 0, **lora},
            "type": "create_model",
        },
    )
    assert r.status_code == 200, r.text
    done = result(http, r.json()["request_id"])
    assert done.status_code == 200, done.text
    assert "error" not in done.json(), done.text
    return str(done.json()["model_id"])


def ce_datum(tokens: list[int], weight: float = 1.0) -> dict[str, Any]:
    """A JSON cross-entropy datum predicting ``tokens[1:]`` from ``tokens[:-1]``."""
    n = len(tokens) - 1
    return {
        "model_input": {"chunks": [{"type": "encoded_text", "tokens": tokens[:-1]}]},
        "loss_fn_inputs": {
            "target_tokens": {"data": tokens[1:], "dtype": "int64", "shape": [n]},
            "weights": {"data": [weight] * n, "dtype": "float32", "shape": [n]},
        },
    }


def fwdbwd_body(
    model_id: str,
    seq_id: int,
    data: list[dict[str, Any]],
    *,
    forward: bool = False,
    loss_fn: str = "cross_entropy",
    config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A JSON-era ``/forward_backward`` (or ``/forward``) body."""
    key = "forward_input" if forward else "forward_backward_input"
    inner: dict[str, Any] = {"data": data, "loss_fn": loss_fn}
    if config is not None:
        inner["loss_fn_config"] = config
    return {key: inner, "model_id": model_id, "seq_id": seq_id}
