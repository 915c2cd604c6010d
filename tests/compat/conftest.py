"""The compat group (``pytest -m compat tests/compat``, run by ``scripts/compat.sh``): code
written for the official ``tinker`` SDK and ``tinker-cookbook``, unchanged, against tinkjax.

Every test here is marked ``compat`` and left out of the default run (``addopts`` in
``pyproject.toml``); those that need torch or the cookbook skip when they are not installed.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/compat/" in item.nodeid.replace("\\", "/"):
            item.add_marker(pytest.mark.compat)


@pytest.fixture(scope="session")
def local_server() -> Iterator[Any]:
    """One local backend over loopback (the micro and 1M byte models) for the group."""
    from tinkjax import server

    handle = server.start(models=["tinkjax/bytelm-micro", "tinkjax/bytelm-1m"])
    try:
        yield handle
    finally:
        handle.stop()
