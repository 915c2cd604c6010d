"""Every Python code block of docs/observability.md runs (telemetry on, embedded backend)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "observability.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


def test_the_page_has_code() -> None:
    assert len(BLOCKS) >= 5


@pytest.mark.timeout(180)
@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_doc_block_runs(index: int, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("TINKER_API_KEY", "TINKER_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("TINKER_TELEMETRY", "1")
    code = compile(BLOCKS[index], f"observability.md[{index}]", "exec")
    exec(code, {"__name__": "__doc__"})
