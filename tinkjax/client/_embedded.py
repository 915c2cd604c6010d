"""The embedded default: the local backend started in-process, once per process."""

from __future__ import annotations

import atexit
import logging
import threading
from typing import Any

__all__ = ["embedded_base_url"]

logger = logging.getLogger("tinkjax.client")

_lock = threading.Lock()
_handle: Any = None


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
