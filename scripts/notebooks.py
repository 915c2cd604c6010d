"""Execute the notebooks in a real Jupyter kernel and save them with their outputs.

    python scripts/notebooks.py                 # re-execute notebooks/*.ipynb in place
    python scripts/notebooks.py --check         # execute copies; exit 1 on any error or warning
    python scripts/notebooks.py notebooks/quickstart.ipynb

Each runs in a fresh ``python3`` kernel (nbclient + ipykernel, from the ``dev`` extra) in the
notebooks folder, on the embedded backend (``TINKER_API_KEY``/``TINKER_BASE_URL`` unset), as a
new user would run it. ``problems`` lists every output that is an error, a stderr stream or a
warning; ``tests/test_notebooks.py`` uses it too.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def execute(path: Path, *, timeout: int = 600) -> Any:
    """The notebook at ``path``, executed top to bottom in a fresh kernel (not saved)."""
    import nbclient
    import nbformat

    nb = nbformat.read(path, as_version=4)
    env = {k: v for k, v in os.environ.items() if k not in ("TINKER_API_KEY", "TINKER_BASE_URL")}
    env.setdefault("TINKER_TELEMETRY", "0")
    client = nbclient.NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    )
    with _environment(env):
        client.execute()
    return nb


class _environment:
    """``os.environ`` replaced for the block (the kernel inherits it)."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env

    def __enter__(self) -> None:
        self.saved = dict(os.environ)
        os.environ.clear()
        os.environ.update(self.env)

    def __exit__(self, *exc: object) -> None:
        os.environ.clear()
        os.environ.update(self.saved)


def problems(nb: Any) -> list[str]:
    """Every error output, stderr stream and warning of an executed notebook."""
    found = []
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            kind = out.get("output_type")
            text = out.get("text", "")
            if kind == "error":
                found.append(f"cell {i}: {out.get('ename')}: {out.get('evalue')}")
            elif kind == "stream" and out.get("name") == "stderr":
                found.append(f"cell {i}: stderr: {text.strip()[:500]}")
            elif "Warning" in text or "warnings.warn" in text:
                found.append(f"cell {i}: a warning in the output: {text.strip()[:500]}")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", type=Path, default=NOTEBOOKS)
    parser.add_argument("--check", action="store_true", help="do not save; fail on problems")
    args = parser.parse_args(argv)
    import nbformat

    failed = False
    for path in args.paths:
        started = time.perf_counter()
        nb = execute(path)
        found = problems(nb)
        elapsed = time.perf_counter() - started
        print(f"{path.name}: {elapsed:.0f} s, {len(found)} problems", flush=True)
        for p in found:
            print(f"  {p}")
        failed = failed or bool(found)
        if not args.check and not found:
            nbformat.write(nb, path)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
