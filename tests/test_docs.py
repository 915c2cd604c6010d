"""Every Python code block of the README and of docs/engine.md, docs/wire.md and docs/sweeps.md runs.

(docs/client.md and docs/server.md have their own tests next to the code they describe.)
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [
    ROOT / "README.md",
    ROOT / "docs" / "engine.md",
    ROOT / "docs" / "wire.md",
    ROOT / "docs" / "sweeps.md",
]
BLOCKS = [
    (doc, i, block)
    for doc in DOCS
    for i, block in enumerate(re.findall(r"```python\n(.*?)```", doc.read_text(), flags=re.S))
]


def test_readme_has_code() -> None:
    assert any(doc.name == "README.md" for doc, _, _ in BLOCKS)


@pytest.mark.timeout(180)
@pytest.mark.parametrize(
    ("doc", "index", "block"), BLOCKS, ids=[f"{d.name}[{i}]" for d, i, _ in BLOCKS]
)
def test_doc_block_runs(doc: Path, index: int, block: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("TINKER_API_KEY", "TINKER_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    exec(compile(block, f"{doc.name}[{index}]", "exec"), {"__name__": "__doc__"})
