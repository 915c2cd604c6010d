"""Fixtures of the client tests: a canned service over ``httpx.MockTransport`` (unit tests) and
one real local backend over loopback for the whole session (end-to-end tests)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tinkjax.client import ServiceClient

from .fake import FakeTinker

API_KEY = "tml-SECRET-do-not-leak-0123456789"


@pytest.fixture
def fake() -> FakeTinker:
    return FakeTinker()


@pytest.fixture
def service(fake: FakeTinker) -> Iterator[ServiceClient]:
    sc = ServiceClient(
        base_url="http://fake.test",
        api_key=API_KEY,
        http_transport=fake.transport(),
        heartbeat_interval=0,
    )
    yield sc
    sc.close()


@pytest.fixture(scope="session")
def local_server() -> Iterator[Any]:
    """One real local backend (micro model) over loopback for every end-to-end test."""
    from tinkjax import server

    handle = server.start(models=["tinkjax/bytelm-micro"])
    try:
        yield handle
    finally:
        handle.stop()


@pytest.fixture
def e2e_service(local_server: Any) -> Iterator[ServiceClient]:
    local_server.faults.clear()
    sc = ServiceClient(base_url=local_server.base_url, api_key=API_KEY)
    yield sc
    local_server.faults.clear()
    sc.close()
