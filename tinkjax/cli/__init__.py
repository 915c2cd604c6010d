"""The ``tinkjax`` command line (``tinkjax serve``, ``run``, ``checkpoint``, ...; docs/cli.md).

:func:`main` runs it in process and returns the exit status; the local backend it starts for a
store (no API key configured) lives until :func:`close_local_stores` or the process's exit.
"""

from tinkjax.cli._common import close_local_stores
from tinkjax.cli._main import build_parser, main

__all__ = ["build_parser", "close_local_stores", "main"]
