"""docs/cli.md documents every command and the exit codes the code uses."""

from __future__ import annotations

import re
from pathlib import Path

from tinkjax.cli import _common
from tinkjax.cli._main import SUBCOMMANDS

DOC = (Path(__file__).resolve().parents[2] / "docs" / "cli.md").read_text()


def test_every_command_is_documented() -> None:
    for name in SUBCOMMANDS:
        assert f"tinkjax {name}" in DOC or f"`{name}`" in DOC, name
    for action in ("list", "info", "download", "delete"):
        assert f"### `tinkjax checkpoint {action}" in DOC


def test_the_exit_code_table_is_the_code() -> None:
    rows = dict(re.findall(r"^\| (\d+) \| `(\w+)` \|", DOC, flags=re.M))
    kinds = {str(_common.CliError("x", kind).exit_code): kind for kind in rows.values()}
    assert rows == kinds
    assert set(rows.values()) == set(_common._KIND_CODES)
