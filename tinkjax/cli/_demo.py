"""The README's main job: a LoRA fine-tune with a custom loss on the embedded backend.

It trains the default byte-level model (seeded, not pretrained) on the bundled text, but its
last paragraph, with ``cross_entropy + entropy bonus + sequence-variance penalty + probability
L2``, computed by the engine in one compiled program and sent to the backend through
``forward_backward_custom``. It ends on results a person can judge: the cross-entropy on the
held-out paragraph before and after training (the model learns English bytes, not only the
text), the per-term table of the last step, and a greedy sample from the trained weights that
reproduces the text it was trained on, with the longest passage it shares with the text.

Progress is a fixed number of plain lines (and, on a terminal, a transient progress bar), so the
output reads the same in a log file as in the README.
"""

from __future__ import annotations

import argparse
import importlib.resources
import sys
import time
from collections.abc import Sequence
from difflib import SequenceMatcher
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from tinkjax.types import Datum

__all__ = [
    "HELP",
    "PROMPT",
    "add_arguments",
    "build_batches",
    "bundled_text",
    "longest_shared",
    "run",
    "run_demo",
    "split_text",
    "windows",
]

PROMPT = "The lighthouse stood"
#: How many progress lines a run prints, whatever its number of steps.
PROGRESS_LINES = 5


def bundled_text() -> str:
    """The bundled training text (written for tinkjax; no download)."""
    return (importlib.resources.files("tinkjax") / "data" / "lighthouse.txt").read_text("utf-8")


def split_text(text: str) -> tuple[str, str]:
    """``(train, held_out)``: every paragraph but the last, and the last."""
    paragraphs = text.strip().split("\n\n")
    return "\n\n".join(paragraphs[:-1]) + "\n\n", paragraphs[-1]


def windows(tokens: Sequence[int], *, seq_len: int, stride: int) -> list[Datum]:
    """Windows of ``seq_len`` tokens every ``stride`` tokens as next-token datums (unit
    weights); the last window ends at the text's end."""
    from tinkjax.types import Datum, ModelInput, TensorData

    arr = np.asarray(tokens, np.int64)
    n = min(seq_len, len(arr) - 1)
    starts = sorted({*range(0, len(arr) - n - 1, stride), len(arr) - n - 1})
    return [
        Datum(
            model_input=ModelInput.from_ints(arr[s : s + n].tolist()),
            loss_fn_inputs={
                "target_tokens": TensorData.from_numpy(arr[s + 1 : s + n + 1]),
                "weights": TensorData.from_numpy(np.ones(n, np.float32)),
            },
        )
        for s in starts
    ]


def build_batches(
    tokens: Sequence[int], *, seq_len: int, batch_size: int, seed: int
) -> list[list[Datum]]:
    """Half-overlapping windows of the text, shuffled into batches of ``batch_size``; the last
    batch is filled up from the start of the shuffled order, so no window is left out."""
    datums = windows(tokens, seq_len=seq_len, stride=max(seq_len // 2, 1))
    order = np.random.default_rng(seed).permutation(len(datums))
    n_batches = -(-len(datums) // batch_size)
    return [
        [datums[order[(b * batch_size + j) % len(datums)]] for j in range(batch_size)]
        for b in range(n_batches)
    ]


def longest_shared(sample: str, text: str) -> str:
    """The longest stretch of ``sample`` that appears verbatim in ``text``."""
    match = SequenceMatcher(None, sample, text, autojunk=False).find_longest_match()
    return sample[match.a : match.a + match.size]


def _per_token(training: Any, data: list[Datum]) -> float:
    """Cross-entropy of ``data`` in nats per token (a forward pass: no update)."""
    out = training.forward(data, "cross_entropy").result()
    n = sum(len(d.loss_fn_inputs["weights"].to_numpy()) for d in data)
    return float(out.metrics["loss:sum"]) / n


def run_demo(
    *,
    steps: int = 100,
    batch_size: int = 24,
    seq_len: int = 128,
    rank: int = 32,
    learning_rate: float = 1e-2,
    base_model: str | None = None,
    base_url: str | None = None,
    seed: int = 0,
    sample_tokens: int = 100,
) -> dict[str, Any]:
    """Runs the main job; returns its losses, the sample and its longest passage shared with
    the text.

    Args:
        steps: optimizer steps.
        batch_size: datums per step.
        seq_len: tokens per datum.
        rank: LoRA rank.
        learning_rate: AdamW learning rate.
        base_model: the model (default: the backend's default preset).
        base_url: a server URL; ``None`` runs on the embedded backend.
        seed: LoRA initialisation, data order and sampling seed.
        sample_tokens: tokens of the final greedy sample.
    """
    from tqdm import tqdm

    from tinkjax import regularizers as R
    from tinkjax.client import ServiceClient
    from tinkjax.models import DEFAULT_MODEL
    from tinkjax.types import AdamParams, ModelInput, SamplingParams

    regs = [
        R.entropy(weight=-0.02, reduction="mean"),
        R.sequence_variance(weight=0.5),
        R.l2(weight=0.05, target="probs", center=1.0, reduction="mean"),
    ]
    model = base_model or DEFAULT_MODEL
    report = sorted({round(i * (steps - 1) / (PROGRESS_LINES - 1)) for i in range(PROGRESS_LINES)})
    with ServiceClient(base_url=base_url) as service:
        training = service.create_lora_training_client(
            base_model=model, rank=rank, seed=seed
        ).result()
        tokenizer = training.get_tokenizer()
        text = bundled_text()
        train_text, held_text = split_text(text)
        batches = build_batches(
            tokenizer.encode(train_text), seq_len=seq_len, batch_size=batch_size, seed=seed
        )
        held_out = windows(tokenizer.encode(held_text), seq_len=seq_len, stride=seq_len)
        n_tokens = batch_size * seq_len
        print(
            f"tinkjax main job: LoRA rank {rank} on {model} (seeded, not pretrained), "
            f"{steps} steps of {batch_size}x{seq_len} tokens\n"
            f"data: {len(train_text)} bytes of the bundled text to train on, its last "
            f"paragraph ({len(held_text)} bytes) held out\n"
            "loss = cross_entropy (sum over tokens) + "
            + " + ".join(f"{r.weight:g}*{r.name}" for r in regs)
            + "\n"
        )
        held_before = _per_token(training, held_out)
        first = last = float("nan")
        out = None
        started = time.perf_counter()
        bar = tqdm(
            range(steps), desc="training", unit="step", file=sys.stdout, leave=False,
            disable=not sys.stdout.isatty(),
        )  # fmt: skip
        for step in bar:
            batch = batches[step % len(batches)]
            out = training.forward_backward_custom(
                batch, "cross_entropy", regularizers=regs, track_grad_norms=True
            ).result()
            training.optim_step(AdamParams(learning_rate=learning_rate)).result()
            last = out.base_loss / n_tokens
            first = last if step == 0 else first
            bar.set_postfix(loss=f"{last:.3f}")
            if step in report:
                bar.write(
                    f"step {step + 1:>4}/{steps}  cross-entropy {last:.3f} nats/token  "
                    f"({time.perf_counter() - started:.0f} s)"
                )
        bar.close()
        held_after = _per_token(training, held_out)
        assert out is not None
        print("\nthe last step's terms (grad norm: of each unweighted term, w.r.t. the logprobs):")
        print(out.summary())
        print(
            f"\ntraining cross-entropy {first:.3f} -> {last:.3f} nats/token\n"
            f"held-out cross-entropy {held_before:.3f} -> {held_after:.3f} nats/token "
            "(the paragraph it never saw)"
        )
        sampler = training.save_weights_and_get_sampling_client(name="demo-final").result()
        response = sampler.sample(
            prompt=ModelInput.from_ints(tokenizer.encode(PROMPT)),
            num_samples=1,
            sampling_params=SamplingParams(max_tokens=sample_tokens, temperature=0.0, seed=seed),
        ).result()
        completion = tokenizer.decode(response.sequences[0].tokens)
        shared = longest_shared(completion, train_text)
        print(f"\nsample (greedy) from the trained weights:\n{PROMPT}{completion}")
        print(
            f"\nlongest passage of the sample found in the text ({len(shared)} chars): {shared!r}"
        )
    return {
        "first_loss": first,
        "last_loss": last,
        "heldout_before": held_before,
        "heldout_after": held_after,
        "sample": completion,
        "shared": shared,
    }


HELP = "run the main job: a custom-loss LoRA fine-tune on the embedded backend, then sample"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``tinkjax demo`` options."""
    p.add_argument("--steps", type=int, default=100, help="optimizer steps (default 100)")
    p.add_argument(
        "--batch-size", type=int, default=24, help="datums per step (default 24: the whole text)"
    )
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--rank", type=int, default=32, help="LoRA rank")
    p.add_argument("--learning-rate", type=float, default=1e-2)
    p.add_argument("--base-model", default=None, help="default: the backend's default preset")
    p.add_argument("--base-url", default=None, help="a server URL (default: embedded backend)")
    p.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    """``tinkjax demo``: 0 when the held-out loss fell."""
    result = run_demo(
        steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len, rank=args.rank,
        learning_rate=args.learning_rate, base_model=args.base_model, base_url=args.base_url,
        seed=args.seed,
    )  # fmt: skip
    return 0 if result["heldout_after"] < result["heldout_before"] else 1
