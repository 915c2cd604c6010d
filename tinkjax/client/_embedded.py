"""The embedded default: the local backend started in-process, once per process.

This is the one place in the client that imports :mod:`tinkjax.server` (lazily: it pulls in
JAX and the models). :func:`tinkjax.client.resolve_config` only marks a configuration
``embedded``; the client that is about to use it (``ServiceClient``, ``RestClient``) calls
:func:`start_embedded`.

The in-process server accepts one key, generated when it starts; :func:`start_embedded` hands it
to every embedded configuration, so no configuration is needed and no other process on the
machine can use the server through its loopback port.
"""

from __future__ import annotations

import atexit
import logging
import secrets
import threading
from typing import Any

import msgspec

from ._config import ClientConfig, remember_secret

__all__ = ["embedded_base_url", "start_embedded"]

logger = logging.getLogger("tinkjax.client")

_lock = threading.Lock()
_handle: Any = None
_key: str = ""


def start_embedded(config: ClientConfig) -> ClientConfig:
    """``config`` unchanged, or, when it is ``embedded``, with the base URL and the key of the
    local backend, started in this process on first use."""
    if not config.embedded:
        return config
    base_url, key = _start()
    return msgspec.structs.replace(config, base_url=base_url, api_key=key)


def embedded_base_url() -> str:
    """Start the local backend in this process on first use; return its base URL."""
    return _start()[0]


def _start() -> tuple[str, str]:
    """The embedded backend's base URL and key (started on first use)."""
    global _handle, _key
    with _lock:
        if _handle is None:
            from tinkjax import server  # lazy: pulls in JAX and the models

            key = "tml-embedded-" + secrets.token_urlsafe(24)
            remember_secret(key)
            _handle = server.start(api_keys=[key])
            _key = key
            atexit.register(_stop)
            logger.info(
                "tinkjax: no base_url or API key configured; started the embedded local "
                "backend at %s",
                _handle.base_url,
            )
        return str(_handle.base_url), _key


def _stop() -> None:
    global _handle
    with _lock:
        if _handle is not None:
            try:
                _handle.stop()
            finally:
                _handle = None
