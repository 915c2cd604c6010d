"""Every notebook in notebooks/ runs top to bottom in a real Jupyter kernel (nbclient +
ipykernel) with no error, no stderr output and no warning in any cell; the saved copies carry
their outputs and figures (so they render where the repository is browsed), and each opens
with a Colab install cell (a no-op anywhere else) and a cell showing the JAX devices.

Re-execute and save them with ``python scripts/notebooks.py`` (``make notebooks``).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
EXPECTED = {"composing_a_loss", "quickstart", "rl_custom_loss", "sweep"}


def _runner() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "run_notebooks", ROOT / "scripts" / "notebooks.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _code(nb: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    return [c for c in nb.cells if c.cell_type == "code"]


def test_the_notebooks_are_there() -> None:
    assert {p.stem for p in NOTEBOOKS} == EXPECTED


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_saved_copy_has_its_outputs_and_figures(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    cells = _code(nb)
    assert all(c.execution_count is not None for c in cells), "saved without running every cell"
    assert _runner().problems(nb) == []
    pngs = [o for c in cells for o in c.outputs if "image/png" in o.get("data", {})]
    if "plt.show()" in "".join(c.source for c in cells):
        assert pngs, "the plots are not saved as PNG"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_opens_with_a_colab_install_cell_and_the_devices(path: Path) -> None:
    install, devices = _code(nbformat.read(path, as_version=4))[:2]
    assert 'if "google.colab" in sys.modules:' in install.source
    assert "git+https://github.com/tinkjax/tinkjax" in install.source
    assert "jax.devices()" in devices.source
    # outside Colab the install cell does nothing: it runs here without calling pip
    assert _install_calls(install.source, on_colab=False) == []
    assert install.outputs == []
    # on Colab it installs from the repository
    (command,) = _install_calls(install.source, on_colab=True)
    assert command[1:4] == ["-m", "pip", "install"]
    assert any("git+https://github.com/tinkjax/tinkjax" in part for part in command)


def _install_calls(source: str, *, on_colab: bool) -> list[list[str]]:
    """The commands the install cell runs (``subprocess.run`` recorded, not run)."""
    calls: list[list[str]] = []
    fake = ModuleType("subprocess")
    fake.run = lambda cmd, **_: calls.append(list(cmd))  # type: ignore[attr-defined]
    patched = {
        "subprocess": fake,
        **({"google.colab": ModuleType("google.colab")} if on_colab else {}),
    }
    saved = {name: sys.modules.get(name) for name in patched}
    sys.modules.update(patched)
    try:
        exec(compile(source, "install cell", "exec"), {})
    finally:
        for name, module in saved.items():
            if module is None:
                del sys.modules[name]
            else:
                sys.modules[name] = module
    return calls


@pytest.mark.timeout(600)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_in_a_real_kernel_without_warnings(path: Path) -> None:
    runner = _runner()
    nb = runner.execute(path)
    assert runner.problems(nb) == []
    assert all(c.execution_count is not None for c in _code(nb))
