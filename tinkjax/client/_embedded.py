"""The embedded default: the local backend started in-process, once per process.

This is the one place in the client that imports :mod:`tinkjax.server` (lazily: it pulls in
JAX and the models). :func:`tinkjax.client.resolve_config` only marks a configuration
``embedded``; the client that is about to use it (``ServiceClient``, ``RestClient``) calls
:func:`start_embedded`.
"""

from __future__ import annotations

import atexit
import logging
import threading
from typing import Any

import msgspec

from ._config import ClientConfig

__all__ = ["embedded_base_url", "start_embedded"]

logger = logging.getLogger("tinkjax.client")

_lock = threading.Lock()
_handle: Any = None


def start_embedded(config: ClientConfig) -> ClientConfig:
    """``config`` unchanged, or, when it is ``embedded``, with the base URL of the local
    backend, started in this process on first use."""
    if not config.embedded:
        return config
    return msgspec.structs.replace(config, base_url=embedded_base_url())


def embedded_base_url() -> str:
    """Start the local backend in this process on first use; return its base URL."""
    global _handle
    with _lock:
        if _handle is None:
            from tinkjax import server  # lazy: pulls in JAX and the models

            _handle = server.start()
            atexit.register(_stop)
            logger.info(
                "tinkjax: no base_url or API key configured; started the embedded local "
                "backend at %s",
                _handle.base_url,
            )
        return str(_handle.base_url)


def _stop() -> None:
    global _handle
    with _lock:
        if _handle is not None:
            try:
                _handle.stop()
            finally:
                _handle = None
