"""The ``tinkjax`` command line (``tinkjax serve``, ...)."""

from tinkjax.cli._main import build_parser, main

__all__ = ["build_parser", "main"]
