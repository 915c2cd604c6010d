"""The installed distribution's version, in a module of its own so that any module can import
it without importing the package root (which re-exports the subpackages)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

__all__ = ["__version__"]

try:
    __version__ = version("tinkjax")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"
