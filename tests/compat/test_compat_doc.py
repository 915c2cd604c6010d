"""The Python code blocks of docs/compat.md run (they need the cookbook, so they live here)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest.importorskip("tinker_cookbook")

DOC = Path(__file__).resolve().parents[2] / "docs" / "compat.md"


def test_compat_doc_blocks_run() -> None:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert blocks
    for block in blocks:
        code = "\n".join(
            line[3:] if line.startswith("   ") else line for line in block.splitlines()
        )
        exec(compile(code, str(DOC), "exec"), {})
    from tinker_cookbook.tokenizer_utils import get_tokenizer

    from tinkjax.models import ByteTokenizer

    tok = get_tokenizer("tinkjax/bytelm-1m")
    assert isinstance(tok, ByteTokenizer)
    assert tok.decode(tok.encode("User: hi", add_special_tokens=False)) == "User: hi"
