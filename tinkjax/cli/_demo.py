"""The README's main job: a LoRA fine-tune with a custom loss on the embedded backend.

It trains the default byte-level model on a small bundled text with
``cross_entropy + entropy bonus + sequence-variance penalty + probability L2``, computed by the
engine in one compiled program and sent to the backend through ``forward_backward_custom``.
Every few steps it prints the per-term table (value, weighted contribution, gradient norm)
beside the falling loss, then samples from the trained weights.
"""

from __future__ import annotations

import argparse
import importlib.resources
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from tinkjax.types import Datum

__all__ = ["HELP", "add_arguments", "build_batches", "format_terms", "run", "run_demo"]

PROMPT = "The lighthouse stood"


def bundled_text() -> str:
    """The bundled training text (written for tinkjax; no download)."""
    return (importlib.resources.files("tinkjax") / "data" / "lighthouse.txt").read_text("utf-8")


def build_batches(
    tokens: Sequence[int], *, seq_len: int, batch_size: int, seed: int
) -> list[list[Datum]]:
    """Overlapping windows of the text as next-token datums, shuffled into batches."""
    from tinkjax.types import Datum, ModelInput, TensorData

    arr = np.asarray(tokens, np.int64)
    stride = max(seq_len // 2, 1)
    starts = range(0, max(len(arr) - seq_len - 1, 1), stride)
    datums = [
        Datum(
            model_input=ModelInput.from_ints(arr[s : s + seq_len].tolist()),
            loss_fn_inputs={
                "target_tokens": TensorData.from_numpy(arr[s + 1 : s + seq_len + 1]),
                "weights": TensorData.from_numpy(np.ones(seq_len, np.float32)),
            },
        )
        for s in starts
    ]
    order = np.random.default_rng(seed).permutation(len(datums))
    shuffled = [datums[i] for i in order]
    return [
        shuffled[i : i + batch_size] for i in range(0, len(shuffled) - batch_size + 1, batch_size)
    ]


def format_terms(out: object) -> str:
    """The per-term table of a ``forward_backward_custom`` result."""
    from tinkjax.client import CustomForwardBackwardOutput

    assert isinstance(out, CustomForwardBackwardOutput)
    rows = [("term", "weight", "value", "contribution", "grad norm")]
    norm = out.base_grad_norm
    rows.append(
        ("base (cross_entropy)", "1", f"{out.base_loss:.4f}", f"{out.base_loss:.4f}",
         "-" if norm is None else f"{norm:.4f}")
    )  # fmt: skip
    for reg in out.regularizers.values():
        rows.append(
            (reg.name, f"{reg.weight:g}", f"{reg.value:.4f}", f"{reg.contribution:+.4f}",
             "-" if reg.grad_norm is None else f"{reg.grad_norm:.4f}")
        )  # fmt: skip
    rows.append(("total", "", "", f"{out.loss_total:.4f}", f"{out.total_grad_norm:.4f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = [
        "  ".join(
            c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def run_demo(
    *,
    steps: int = 240,
    batch_size: int = 8,
    seq_len: int = 64,
    rank: int = 16,
    learning_rate: float = 5e-3,
    report_every: int = 40,
    base_model: str | None = None,
    base_url: str | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Runs the main job and returns the first and last loss per token and the sample match.

    Args:
        steps: optimizer steps.
        batch_size: datums per step.
        seq_len: tokens per datum.
        rank: LoRA rank.
        learning_rate: AdamW learning rate.
        report_every: print the per-term table every this many steps.
        base_model: the model (default: the backend's default preset).
        base_url: a server URL; ``None`` runs on the embedded backend.
        seed: data order and sampling seed.
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
    service = ServiceClient(base_url=base_url)
    with service:
        training = service.create_lora_training_client(
            base_model=model, rank=rank, seed=seed
        ).result()
        tokenizer = training.get_tokenizer()
        text = bundled_text()
        batches = build_batches(
            tokenizer.encode(text), seq_len=seq_len, batch_size=batch_size, seed=seed
        )
        print(
            f"tinkjax main job: LoRA rank {rank} on {model}, {len(text)} bytes of text, "
            f"{steps} steps of {batch_size}x{seq_len} tokens; loss = cross_entropy + "
            + " + ".join(f"{r.weight:g}*{r.name}" for r in regs)
        )
        first = last = float("nan")
        started = time.perf_counter()
        bar = tqdm(range(steps), desc="training", unit="step", file=sys.stdout, leave=True)
        for step in bar:
            batch = batches[step % len(batches)]
            out = training.forward_backward_custom(
                batch, "cross_entropy", regularizers=regs, track_grad_norms=True
            ).result()
            training.optim_step(AdamParams(learning_rate=learning_rate)).result()
            per_token = out.base_loss / (batch_size * seq_len)
            first = per_token if step == 0 else first
            last = per_token
            bar.set_postfix(loss=f"{per_token:.3f}", total=f"{out.loss_total:.1f}")
            if step % report_every == 0 or step == steps - 1:
                bar.write(f"\nstep {step}: cross-entropy {per_token:.4f} nats/token")
                bar.write(format_terms(out))
        bar.close()
        elapsed = time.perf_counter() - started
        print(f"trained in {elapsed:.1f} s: loss {first:.3f} -> {last:.3f} nats/token")
        sampler = training.save_weights_and_get_sampling_client(name="demo-final").result()
        prompt = ModelInput.from_ints(tokenizer.encode(PROMPT))
        response = sampler.sample(
            prompt=prompt,
            num_samples=1,
            sampling_params=SamplingParams(max_tokens=120, temperature=0.0, seed=seed),
        ).result()
        completion = tokenizer.decode(response.sequences[0].tokens)
        print(f"\nsample (greedy) from the trained weights:\n{PROMPT}{completion}")
    return {"first_loss": first, "last_loss": last}


HELP = "run the main job: a custom-loss LoRA fine-tune on the embedded backend, then sample"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``tinkjax demo`` options."""
    p.add_argument("--steps", type=int, default=240, help="optimizer steps (default 240)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--rank", type=int, default=16, help="LoRA rank")
    p.add_argument("--learning-rate", type=float, default=5e-3)
    p.add_argument("--report-every", type=int, default=40, help="per-term table period")
    p.add_argument("--base-model", default=None, help="default: the backend's default preset")
    p.add_argument("--base-url", default=None, help="a server URL (default: embedded backend)")
    p.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    """``tinkjax demo``: 0 when the loss fell."""
    result = run_demo(
        steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len, rank=args.rank,
        learning_rate=args.learning_rate, report_every=args.report_every,
        base_model=args.base_model, base_url=args.base_url, seed=args.seed,
    )  # fmt: skip
    return 0 if result["last_loss"] < result["first_loss"] else 1
