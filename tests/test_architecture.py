"""Architecture rules that `lint-imports` cannot see (see ``[tool.importlinter]`` in pyproject.toml).

`lint-imports` builds its graph from the ``tinkjax/`` folder, so it checks layers, cycles and
private modules there. These tests add what it cannot: ``kernels/`` (installed as
``tinkjax.kernels`` from another folder), arrows back up into the ``tinkjax`` root package,
private *names* imported across modules, and module size.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "tinkjax"
KERNELS = ROOT / "kernels"
#: Past this a module holds more than one idea (STYLE.md: aim for 150-300 lines, split past 600).
MAX_MODULE_LINES = 600


def _sources(folder: Path) -> Iterator[Path]:
    for path in sorted(folder.rglob("*.py")):
        if path.name.endswith("_pb2.py"):
            continue  # generated protobuf code
        yield path


def _module_name(path: Path) -> str:
    if path.is_relative_to(KERNELS):
        parts = ("tinkjax", "kernels", *path.relative_to(KERNELS).with_suffix("").parts)
    else:
        parts = path.relative_to(ROOT).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> Iterator[tuple[int, str, list[str]]]:
    """``(line, absolute module, imported names)`` for every import in ``path``, however nested."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, []
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            yield node.lineno, target, [alias.name for alias in node.names]


def _is_module(name: str) -> bool:
    parts = name.split(".")
    if parts[:2] == ["tinkjax", "kernels"]:
        base = KERNELS.joinpath(*parts[2:])
    else:
        base = ROOT.joinpath(*parts)
    return base.is_dir() or base.with_suffix(".py").exists()


ALL_SOURCES = [*_sources(PACKAGE), *_sources(KERNELS)]


def test_kernels_import_nothing_of_tinkjax_but_themselves() -> None:
    bad = [
        f"{path.relative_to(ROOT)}:{line} imports {target}"
        for path in _sources(KERNELS)
        for line, target, _ in _imports(path)
        if target.split(".")[0] in ("tinkjax", "kernels")
        and not target.startswith("tinkjax.kernels")
    ]
    assert not bad, "\n".join(bad)


def test_no_module_imports_from_the_root_package() -> None:
    """``tinkjax/__init__`` re-exports the subpackages; an import of it from below is an arrow up."""
    bad = [
        f"{path.relative_to(ROOT)}:{line} imports {names} from the root package"
        for path in ALL_SOURCES
        if _module_name(path) != "tinkjax"
        for line, target, names in _imports(path)
        if target == "tinkjax"
        and any(
            not (PACKAGE / name).is_dir() and not (PACKAGE / f"{name}.py").exists()
            for name in names
        )
    ]
    assert not bad, "\n".join(bad)


def test_no_private_name_is_imported_from_another_module() -> None:
    """A private name is its module's own: what two modules share gets a public name."""
    bad = [
        f"{path.relative_to(ROOT)}:{line} imports {name} from {target}"
        for path in ALL_SOURCES
        for line, target, names in _imports(path)
        for name in names
        if name.startswith("_")
        and not name.startswith("__")
        and target != _module_name(path)
        and not _is_module(f"{target}.{name}")
    ]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("path", ALL_SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_module_is_at_most_600_lines(path: Path) -> None:
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_MODULE_LINES, f"{path.relative_to(ROOT)} has {lines} lines"


def test_the_checks_see_every_package() -> None:
    """Guards the scanners above: an empty or mis-rooted scan would pass vacuously."""
    names = {_module_name(path) for path in ALL_SOURCES}
    for expected in ("tinkjax.client", "tinkjax.server", "tinkjax.engine", "tinkjax.kernels"):
        assert expected in names, sorted(names)
    assert sum(1 for _ in _imports(PACKAGE / "__init__.py")) > 3
