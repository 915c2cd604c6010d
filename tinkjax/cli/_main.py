"""``tinkjax`` entry point: an argparse parser with one subcommand per action.

Subcommands register themselves in :data:`SUBCOMMANDS` as ``name -> (help, add_arguments, run)``;
add a module and an entry to add a command. ``run`` returns the exit status or raises
:class:`~tinkjax.cli._common.CliError`; :func:`main` turns SDK errors into the documented exit
codes (see :mod:`tinkjax.cli._common` and docs/cli.md).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from tinkjax._version import __version__
from tinkjax.cli import _checkpoint, _demo, _models, _sample, _serve, _sweep, _version_cmd
from tinkjax.cli._common import EXIT_USAGE, error_of, print_error

__all__ = ["SUBCOMMANDS", "build_parser", "main"]

SUBCOMMANDS: dict[
    str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]
] = {
    "serve": (_serve.HELP, _serve.add_arguments, _serve.run),
    "demo": (_demo.HELP, _demo.add_arguments, _demo.run),
    "sweep": (_sweep.HELP, _sweep.add_arguments, _sweep.run),
    "version": (_version_cmd.HELP, _version_cmd.add_arguments, _version_cmd.run),
    "models": (_models.HELP, _models.add_arguments, _models.run),
    "model": (_models.MODEL_HELP, _models.add_model_arguments, _models.run_model),
    "checkpoint": (_checkpoint.HELP, _checkpoint.add_arguments, _checkpoint.run),
    "run": (_sample.HELP, _sample.add_arguments, _sample.run),
    "sample": (_sample.SAMPLE_HELP, _sample.add_sample_arguments, _sample.run_sample),
}


def build_parser() -> argparse.ArgumentParser:
    """The ``tinkjax`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="tinkjax",
        description="tinkjax: Tinker SDK with a JAX engine and a local backend. Without "
        "TINKER_API_KEY / TINKER_BASE_URL, client commands use the local backend on a "
        "persistent store ($TINKJAX_HOME, else ~/.tinkjax). Exit codes: 0 ok, 1 error, "
        "2 usage, 3 not found, 4 auth, 5 rejected, 6 server, 130 interrupted.",
    )
    parser.add_argument("--version", action="version", version=f"tinkjax {__version__}")
    parser.add_argument(
        "-f", "--format", dest="global_format", choices=["table", "json"], default=None,
        help="output format of every command (default: table)",
    )  # fmt: skip
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_text, add_arguments, run) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_arguments(p)
        p.set_defaults(_run=run)
    return parser


def _format_of(argv: Sequence[str]) -> str:
    """``json`` when the arguments ask for JSON output (for errors raised while parsing)."""
    args = list(argv)
    for i, a in enumerate(args):
        if a == "--json" or a in ("-fjson", "--format=json"):
            return "json"
        if a in ("-f", "--format") and i + 1 < len(args) and args[i + 1] == "json":
            return "json"
    return "table"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (see docs/cli.md)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2, already printed)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    run = getattr(args, "_run", None)
    if run is None:
        parser.print_help()
        return EXIT_USAGE
    command = " ".join(
        str(x)
        for x in (args.command, getattr(args, "checkpoint_action", None),
                  getattr(args, "run_action", None))
        if x
    )  # fmt: skip
    try:
        return int(run(args))
    except BaseException as exc:
        if isinstance(exc, SystemExit | GeneratorExit):
            raise
        if not isinstance(exc, Exception | KeyboardInterrupt):
            raise
        err = error_of(exc)
        print_error(command, err, _format_of(argv))
        return err.exit_code
