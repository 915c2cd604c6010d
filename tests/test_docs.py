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


def shape(text: str) -> list[str]:
    """The lines of a printed output with its numbers, model names, sample and quoted
    passages masked: what must read the same whatever the machine, model size and seed."""
    out: list[str] = []
    in_sample = False
    for line in text.strip("\n").splitlines():
        if in_sample and not line.startswith("longest passage"):
            continue  # the sample's text (and the blank line after it)
        in_sample = False
        masked = re.sub(r"tinkjax/[\w.-]+", "<model>", line)
        masked = re.sub(r"'.*'$", "'<passage>'", masked)
        masked = re.sub(r"[-+]?\d+(\.\d+)?(e[-+]?\d+)?", "#", masked)
        masked = re.sub(r"-{3,}", "---", re.sub(r" +", " ", masked)).strip()
        out.append(masked)
        if line.startswith("sample (greedy)"):
            out.append("<sample>")
            in_sample = True
    return out


def _printed_block(after: str) -> str:
    """The ```text block of the README that follows the line ``after``."""
    readme = (ROOT / "README.md").read_text()
    match = re.search(re.escape(after) + r".*?```text\n(.*?)```", readme, flags=re.S)
    assert match, f"README: no output block after {after!r}"
    return match.group(1)


@pytest.mark.timeout(180)
def test_readme_shows_what_the_main_job_prints(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from tinkjax.cli._demo import run_demo

    for var in ("TINKER_API_KEY", "TINKER_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    run_demo(steps=6, batch_size=4, seq_len=32, rank=4, base_model="tinkjax/bytelm-micro",
             sample_tokens=24)  # fmt: skip
    printed = capsys.readouterr().out
    assert shape(_printed_block("## What the main job shows")) == shape(printed)


@pytest.mark.timeout(180)
def test_readme_custom_loss_snippet_prints_what_the_readme_shows(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ("TINKER_API_KEY", "TINKER_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## A custom loss in a few lines") :]
    code = re.search(r"```python\n(.*?)```", section, flags=re.S)
    assert code
    exec(compile(code.group(1), "README custom loss", "exec"), {"__name__": "__doc__"})
    printed = capsys.readouterr().out
    assert shape(_printed_block("## A custom loss in a few lines")) == shape(printed)
    assert "0.0000" not in printed.split("sequence_variance")[1].splitlines()[0]  # it acts
