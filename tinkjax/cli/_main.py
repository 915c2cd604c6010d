"""``tinkjax`` entry point: an argparse parser with one subcommand per action.

Subcommands register themselves in :data:`SUBCOMMANDS` as ``name -> (help, add_arguments, run)``;
add a module and an entry to add a command.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

from tinkjax._version import __version__
from tinkjax.cli import _demo, _serve, _sweep

__all__ = ["SUBCOMMANDS", "build_parser", "main"]

SUBCOMMANDS: dict[
    str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]
] = {
    "serve": (_serve.HELP, _serve.add_arguments, _serve.run),
    "demo": (_demo.HELP, _demo.add_arguments, _demo.run),
    "sweep": (_sweep.HELP, _sweep.add_arguments, _sweep.run),
}


def build_parser() -> argparse.ArgumentParser:
    """The ``tinkjax`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="tinkjax", description="tinkjax: Tinker SDK with a JAX engine and a local backend."
    )
    parser.add_argument("--version", action="version", version=f"tinkjax {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_text, add_arguments, run) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_arguments(p)
        p.set_defaults(_run=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    run = getattr(args, "_run", None)
    if run is None:
        parser.print_help()
        return 2
    return int(run(args))
