"""``tinkjax version [--json]``: the package version, and the git commit when available."""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

__all__ = ["HELP", "add_arguments", "git_commit", "run", "version_info"]

HELP = "print the tinkjax version (and the git commit of a source checkout)"


def git_commit() -> str | None:
    """The short commit of the git checkout tinkjax is imported from, if it is one.

    Only a checkout whose top folder holds this very package counts (a virtual environment
    inside some other repository does not); ``None`` without git or outside a checkout.
    """
    pkg = Path(__file__).resolve().parents[1]  # .../tinkjax
    try:
        top = subprocess.run(
            ["git", "-C", str(pkg), "rev-parse", "--show-toplevel"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()  # fmt: skip
        if not top or Path(top).resolve() != pkg.parent:
            return None
        sha = subprocess.run(
            ["git", "-C", str(pkg), "rev-parse", "--short=12", "HEAD"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return sha or None


def version_info() -> dict[str, str | None]:
    """``{"version": ..., "commit": ... or None}``."""
    from tinkjax._version import __version__

    return {"version": __version__, "commit": git_commit()}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``tinkjax version`` options."""
    p.add_argument("--json", action="store_true", help='print {"version": ..., "commit": ...}')


def run(args: argparse.Namespace) -> int:
    """Print ``tinkjax VERSION (COMMIT)``, or the JSON object."""
    info = version_info()
    if args.json or getattr(args, "global_format", None) == "json":
        print(json.dumps(info))
    else:
        commit = f" ({info['commit']})" if info["commit"] else ""
        print(f"tinkjax {info['version']}{commit}")
    return 0
