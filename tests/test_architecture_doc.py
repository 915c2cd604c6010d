"""docs/architecture.md stays true: every module it names exists, every contract is described."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "architecture.md").read_text()


def _module_paths() -> set[str]:
    found = set()
    for path in (ROOT / "tinkjax").rglob("*.py"):
        found.add(str(path.relative_to(ROOT)))
        found.add(f"{path.parent.name}/{path.name}")
        found.add(path.name)
    return found


def test_every_module_the_page_names_exists() -> None:
    named = set(re.findall(r"[\w/]*_[a-z_]+\.py", DOC))
    assert len(named) > 20, sorted(named)
    known = _module_paths()
    missing = sorted(name for name in named if name not in known and not (ROOT / name).exists())
    assert not missing, f"docs/architecture.md names modules that do not exist: {missing}"


def test_every_subpackage_is_placed_in_the_layers() -> None:
    packages = sorted(
        p.name
        for p in (ROOT / "tinkjax").iterdir()
        if (p / "__init__.py").exists() and p.name != "data"
    )
    missing = [name for name in packages if f"tinkjax.{name}" not in DOC]
    assert not missing, missing


def test_the_layer_list_matches_the_contract() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    layers = next(c for c in config["contracts"] if c["type"] == "layers")["layers"]
    diagram = DOC.split("## Layers", 1)[1].split("```", 2)[1]
    order = [
        name
        for layer in layers
        for name in (n.strip() for n in layer.split("|"))
        if not name.startswith("_")
    ]
    positions = [diagram.find(f"tinkjax.{name}") for name in order]
    assert all(p >= 0 for p in positions), dict(zip(order, positions, strict=True))
    assert positions == sorted(positions), "the diagram lists the layers in another order"
