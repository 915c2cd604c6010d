"""CLI run with a text prompt: ``tinkjax run`` called programmatically.

``tinkjax.cli.main(argv)`` is the ``tinkjax`` command in process: it returns the exit status.
The script samples two completions of a text prompt into a file, reads them back, and checks
that a bad invocation exits with the documented usage code (2). Without ``TINKER_API_KEY`` the
CLI runs the local backend on a store folder (here a temporary one, ``--data-dir``)::

    python examples/cli_run_text.py
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path

from _shared import example_model, expect, is_local

from tinkjax.cli import close_local_stores
from tinkjax.cli import main as tinkjax_cli


def main(max_tokens: int = 12, base_model: str | None = None) -> str:
    """Runs ``tinkjax run``; returns what it wrote."""
    model = base_model or example_model()
    with tempfile.TemporaryDirectory(prefix="tinkjax-cli-") as tmp:
        store = ["--data-dir", str(Path(tmp) / "store")] if is_local() else []
        out = Path(tmp) / "samples.txt"
        try:
            argv = ["run", "--base-model", model, "--prompt", "Hello there",
                    "--max-tokens", str(max_tokens), "--temperature", "0.7", "--num-samples", "2",
                    "--output", str(out), *store]  # fmt: skip
            print("$ tinkjax " + " ".join(argv))
            code = tinkjax_cli(argv)
            expect(code == 0, f"tinkjax run exited {code}")
            text = out.read_text()
            print(text)
            expect(text.startswith("Sample 1:\n") and "\n\nSample 2:\n" in text,
                   "the output does not hold two samples")  # fmt: skip
            expect(text.count("stop_reason=") == 2, "a sample lacks its stop reason")
            bad = tinkjax_cli(["run", "--base-model", model, *store])  # no prompt
            expect(bad == 2, f"a run without a prompt exited {bad}, not 2 (usage)")
        finally:
            with contextlib.suppress(Exception):
                close_local_stores()
    return text


if __name__ == "__main__":
    main()
