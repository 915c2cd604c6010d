"""``tinkjax models [SUBSTRING]``: the base models the backend serves."""

from __future__ import annotations

import argparse

from tinkjax.cli._common import (
    CliError,
    add_connection_arguments,
    add_format_arguments,
    connect,
    output_format,
    print_json,
    print_table,
    to_builtins,
)

__all__ = ["HELP", "MODEL_HELP", "add_arguments", "add_model_arguments", "run", "run_model"]

HELP = "list the base models the backend serves"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``tinkjax models`` options."""
    p.add_argument(
        "substring", nargs="?", default=None, help="only models whose name contains it (any case)"
    )
    add_format_arguments(p)
    add_connection_arguments(p)


def run(args: argparse.Namespace) -> int:
    """Print the models (exit 3 when SUBSTRING matches none)."""
    fmt = output_format(args)
    with connect(args).rest() as rest:
        models = list(rest.get_server_capabilities().result().supported_models)
    if args.substring is not None:
        needle = args.substring.lower()
        models = [m for m in models if m.model_name and needle in m.model_name.lower()]
        if not models:
            raise CliError(f"no model name contains {args.substring!r}", "not_found")
    if fmt == "json":
        print_json({"models": [to_builtins(m) for m in models]})
    else:
        print_table(
            ["Model", "Max Context", "Trainable", "Sampleable"],
            [[m.model_name, m.max_context_length, m.trainable, m.sampleable] for m in models],
        )
    return 0


MODEL_HELP = "tinkjax model list [SUBSTRING]: the official tinker CLI's name for tinkjax models"


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """``tinkjax model list``, as the official ``tinker model list``."""
    sub = p.add_subparsers(dest="model_action", metavar="ACTION", required=True)
    add_arguments(sub.add_parser("list", help=HELP, description=HELP))


def run_model(args: argparse.Namespace) -> int:
    """``tinkjax model list``: the same as ``tinkjax models``."""
    return run(args)
