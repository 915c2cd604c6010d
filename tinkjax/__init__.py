"""tinkjax: a Tinker SDK whose heart is a JAX engine for custom losses and regularizers."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tinkjax")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = ["__version__"]
