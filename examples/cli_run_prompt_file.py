"""CLI run with a prompt file and JSON output: ``tinkjax run --prompt-file F --json``.

A prompt file holds text, or a JSON array of token ids. The script writes the same prompt both
ways, samples greedily from each with ``--json --output``, parses the responses, and checks
that both gave the same completions, each with its tokens, logprobs and decoded text::

    python examples/cli_run_prompt_file.py
"""

from __future__ import annotations

import contextlib
import json
import math
import tempfile
from pathlib import Path
from typing import Any

from _shared import example_model, expect, is_local

import tinkjax
from tinkjax.cli import close_local_stores
from tinkjax.cli import main as tinkjax_cli

PROMPT = "The answer is"


def main(max_tokens: int = 8, base_model: str | None = None) -> dict[str, Any]:
    """Runs ``tinkjax run`` on both prompt files; returns the parsed response of the first."""
    model = base_model or example_model()
    with tinkjax.ServiceClient() as service:  # only for the model's tokenizer
        tokenizer = service.create_sampling_client(base_model=model).result().get_tokenizer()
    ids = list(tokenizer.encode(PROMPT))
    with tempfile.TemporaryDirectory(prefix="tinkjax-cli-") as tmp:
        root = Path(tmp)
        store = ["--data-dir", str(root / "store")] if is_local() else []
        (root / "prompt.txt").write_text(PROMPT)
        (root / "prompt.json").write_text(json.dumps(ids))
        responses = []
        try:
            for name in ("prompt.txt", "prompt.json"):
                argv = ["run", "--base-model", model, "--prompt-file", str(root / name),
                        "--max-tokens", str(max_tokens), "--temperature", "0",
                        "--num-samples", "2", "--json", "--output", str(root / f"{name}.out"),
                        *store]  # fmt: skip
                print("$ tinkjax " + " ".join(argv))
                code = tinkjax_cli(argv)
                expect(code == 0, f"tinkjax run exited {code}")
                responses.append(json.loads((root / f"{name}.out").read_text()))
        finally:
            with contextlib.suppress(Exception):
                close_local_stores()
    by_text, by_ids = responses
    for seq in by_text["sequences"]:
        print(f"{PROMPT!r} + {seq['text']!r}  ({seq['stop_reason']})")
        expect(1 <= len(seq["tokens"]) <= max_tokens, f"{len(seq['tokens'])} tokens")
        expect(len(seq["logprobs"]) == len(seq["tokens"]), "one logprob per token")
        expect(all(math.isfinite(x) and x <= 0 for x in seq["logprobs"]), "bad logprobs")
    expect(len(by_text["sequences"]) == 2, "asked for 2 samples")
    expect([s["tokens"] for s in by_text["sequences"]] == [s["tokens"] for s in by_ids["sequences"]],
           "the text prompt and its token ids gave different greedy completions")  # fmt: skip
    return dict(by_text)


if __name__ == "__main__":
    main()
