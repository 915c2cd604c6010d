"""Process-wide JAX settings tinkjax relies on: the persistent compilation cache.

JAX's default ``jax_persistent_cache_min_compile_time_secs`` of 1 s means nothing tinkjax
compiles is ever cached (our programs compile in 0.1-1 s, see the engine study), so the
threshold is lowered to 0 when the cache is enabled.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

_enabled_dir: str | None = None


def default_cache_dir() -> Path:
    """``$TINKJAX_JAX_CACHE`` or ``~/.cache/tinkjax/jax``."""
    env = os.environ.get("TINKJAX_JAX_CACHE")
    if env:
        return Path(env)
    return Path.home() / ".cache" / "tinkjax" / "jax"


def enable_compilation_cache(path: str | os.PathLike[str] | None = None) -> str | None:
    """Turn on JAX's persistent compilation cache (idempotent).

    Set ``TINKJAX_JAX_CACHE=off`` to leave JAX's settings untouched. Returns the cache
    directory in use, or ``None`` when disabled.
    """
    global _enabled_dir
    if os.environ.get("TINKJAX_JAX_CACHE", "").lower() in {"off", "0", "none"}:
        return None
    if _enabled_dir is not None:
        return _enabled_dir
    import jax

    configured = jax.config.jax_compilation_cache_dir  # type: ignore[attr-defined]
    if configured:  # the user configured it already
        _enabled_dir = str(configured)
        return _enabled_dir
    cache = Path(path) if path is not None else default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    update: Any = jax.config.update  # untyped in jax's stubs
    update("jax_compilation_cache_dir", str(cache))
    update("jax_persistent_cache_min_compile_time_secs", 0.0)
    update("jax_persistent_cache_min_entry_size_bytes", 0)
    _enabled_dir = str(cache)
    return _enabled_dir
