"""The sweep's errors: both are refusals before anything runs."""

from __future__ import annotations

from tinkjax.errors import ConfigurationError

__all__ = ["SweepConfigError", "SweepDirectoryError"]


class SweepConfigError(ConfigurationError):
    """A sweep definition that cannot run: a config leaf that does not exist, a grid with no
    runs, a non-finite value, two identical runs, a bad setting. The message names the leaf."""


class SweepDirectoryError(ConfigurationError):
    """The sweep directory holds another sweep (or an unreadable one). The message names the
    file; use another directory, or delete it to start over."""
