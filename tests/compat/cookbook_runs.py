"""Cookbook runs against a tinkjax backend, as a new user would write them: tinkjax's byte
tokenizer registered through the cookbook's own ``register_tokenizer``, the ``role_colon``
renderer, small datasets made in code. Imported by the tests, and run as a script
(``python tests/compat/cookbook_runs.py sft BASE_URL LOG_PATH``) for the crash-and-resume test.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import chz
import tinker
from tinker_cookbook import renderers
from tinker_cookbook.preference import train_dpo
from tinker_cookbook.preference.dpo_datasets import DPODatasetBuilderFromComparisons
from tinker_cookbook.preference.preference_datasets import ComparisonBuilderFromJsonl
from tinker_cookbook.supervised import train as sl_train
from tinker_cookbook.supervised.data import conversation_to_datum
from tinker_cookbook.supervised.types import (
    ChatDatasetBuilderCommonConfig,
    SupervisedDataset,
    SupervisedDatasetBuilder,
)
from tinker_cookbook.tokenizer_utils import get_tokenizer, register_tokenizer

from tinkjax.models import ByteTokenizer

MODEL = "tinkjax/bytelm-1m"
RENDERER = "role_colon"

register_tokenizer(MODEL, ByteTokenizer)

#: A tiny chat task: the assistant answers each question with one fixed word.
QUESTIONS = ["hi?", "sky?", "sea?", "sun?", "tree?", "cat?", "dog?", "moon?"]
ANSWER = "blue"


def conversations() -> list[list[dict[str, str]]]:
    return [
        [{"role": "user", "content": q}, {"role": "assistant", "content": ANSWER}]
        for q in QUESTIONS
    ]


def renderer() -> Any:
    return renderers.get_renderer(RENDERER, get_tokenizer(MODEL))


class ChatBatches(SupervisedDataset):
    """Batches of the fixed chat task, the same every epoch."""

    def __init__(self, batch_size: int, n_batches: int) -> None:
        r = renderer()
        self.datums = [conversation_to_datum(c, r, max_length=64) for c in conversations()]
        self.batch_size = batch_size
        self.n_batches = n_batches

    def get_batch(self, index: int) -> list[tinker.Datum]:
        start = (index * self.batch_size) % len(self.datums)
        return [self.datums[(start + i) % len(self.datums)] for i in range(self.batch_size)]

    def __len__(self) -> int:
        return self.n_batches

    def set_epoch(self, seed: int = 0) -> None:
        pass


@chz.chz
class ChatBuilder(SupervisedDatasetBuilder):
    batch_size: int = 4
    n_batches: int = 8

    def __call__(self) -> tuple[SupervisedDataset, SupervisedDataset | None]:
        return ChatBatches(self.batch_size, self.n_batches), None


def sft_config(base_url: str, log_path: str, *, n_batches: int = 8) -> Any:
    return sl_train.Config(
        log_path=log_path,
        model_name=MODEL,
        recipe_name="tinkjax_compat",
        renderer_name=RENDERER,
        dataset_builder=ChatBuilder(n_batches=n_batches),
        learning_rate=4e-3,
        lr_schedule="constant",
        lora_rank=8,
        base_url=base_url,
        save_every=2,
        eval_every=0,
        infrequent_eval_every=0,
    )


def write_comparisons(path: Path) -> None:
    """Preference pairs: the assistant should answer "yes", not "no"."""
    rows = [
        {
            "comparison": {
                "prompt_conversation": [{"role": "user", "content": q}],
                "completion_A": [{"role": "assistant", "content": "yes"}],
                "completion_B": [{"role": "assistant", "content": "no"}],
            },
            "label": "A",
        }
        for q in QUESTIONS
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def dpo_config(base_url: str, log_path: str) -> Any:
    comparisons = Path(log_path).parent / "comparisons.jsonl"
    write_comparisons(comparisons)
    return train_dpo.Config(
        log_path=log_path,
        model_name=MODEL,
        recipe_name="tinkjax_compat",
        renderer_name=RENDERER,
        dataset_builder=DPODatasetBuilderFromComparisons(
            comparison_builder=ComparisonBuilderFromJsonl(train_path=str(comparisons)),
            common_config=ChatDatasetBuilderCommonConfig(
                model_name_for_tokenizer=MODEL,
                renderer_name=RENDERER,
                max_length=64,
                batch_size=4,
            ),
        ),
        learning_rate=3e-3,
        lr_schedule="constant",
        num_epochs=3,
        dpo_beta=0.5,
        lora_rank=8,
        base_url=base_url,
        save_every=0,
        eval_every=0,
        infrequent_eval_every=0,
    )


def metrics(log_path: str | Path) -> list[dict[str, Any]]:
    path = Path(log_path) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


if __name__ == "__main__":
    kind, base_url, log_path = sys.argv[1:4]
    if kind == "sft":
        asyncio.run(sl_train.main(sft_config(base_url, log_path)))
    elif kind == "dpo":
        train_dpo.main(dpo_config(base_url, log_path))
    else:
        raise SystemExit(f"unknown run {kind!r}")
