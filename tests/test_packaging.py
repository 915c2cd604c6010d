"""Packaging: ``kernels/`` installs as ``tinkjax.kernels`` only, every package is declared,
the version comes from the installed metadata, and the public surface is typed and sorted."""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.resources
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run_outside_repo(code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter from ``/`` so the repository root is not on sys.path."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        [sys.executable, "-P", "-c", code],
        cwd="/",
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_kernels_import_as_tinkjax_kernels_only() -> None:
    code = (
        "import sys, importlib.util\n"
        f"assert not any(p in ('', '.') or p.rstrip('/') == {str(ROOT)!r} for p in sys.path), sys.path\n"
        "import tinkjax.kernels as k\n"
        "print(k.__name__)\n"
        "print(importlib.util.find_spec('kernels'))\n"
        "try:\n"
        "    import kernels\n"
        "except ModuleNotFoundError as exc:\n"
        "    print('no top-level kernels:', exc.name)\n"
        "else:\n"
        "    raise SystemExit('top-level kernels is importable: ' + kernels.__file__)\n"
    )
    proc = _run_outside_repo(code)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines == ["tinkjax.kernels", "None", "no top-level kernels: kernels"]


def _package_folders() -> set[str]:
    """Every folder shipping files, as a dotted name: setuptools treats each folder inside a
    package as a package (data-only ones too) and warns unless it is declared."""
    found = set()
    for base, dotted in ((ROOT / "tinkjax", "tinkjax"), (ROOT / "kernels", "tinkjax.kernels")):
        for path in base.rglob("*"):
            if not path.is_file():
                continue
            rel = path.parent.relative_to(base)
            if any(part.startswith(".") or part == "__pycache__" for part in rel.parts):
                continue
            found.add(".".join((dotted, *rel.parts)))
    return found


def test_every_package_folder_is_declared() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    setuptools = config["tool"]["setuptools"]
    declared = set(setuptools["packages"])
    folders = _package_folders()
    assert folders, "no package folders found"
    assert folders - declared == set(), "package folders missing from [tool.setuptools] packages"
    assert declared - folders == set(), "declared packages without a folder"
    assert setuptools["package-dir"] == {"tinkjax.kernels": "kernels"}


def test_version_comes_from_the_installed_metadata() -> None:
    import tinkjax

    assert tinkjax.__version__ == importlib.metadata.version("tinkjax")
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert tinkjax.__version__ == config["project"]["version"]


@pytest.mark.parametrize("package", ["tinkjax", "tinkjax.kernels"])
def test_py_typed_is_shipped(package: str) -> None:
    assert importlib.resources.files(package).joinpath("py.typed").is_file()


def isort_key(name: str) -> tuple[int, str]:
    """Ruff's RUF022 order for ``__all__``: CONSTANTS, then Classes, then functions."""
    return (0 if name.isupper() else 1 if name[:1].isupper() else 2, name)


@pytest.mark.parametrize("package", sorted(_package_folders()))
def test_all_is_sorted_and_resolves(package: str) -> None:
    module = importlib.import_module(package)
    names = getattr(module, "__all__", None)
    if package == "tinkjax":
        assert names is not None, "tinkjax has no __all__"
    if names is None:
        return
    assert list(names) == sorted(names, key=isort_key)
    assert len(set(names)) == len(names)
    missing = [n for n in names if not hasattr(module, n)]
    assert missing == []
