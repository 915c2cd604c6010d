"""Training loop: forward/backward, optimizer step, save, sample from the trained weights.

A LoRA adapter learns one sentence by heart (next-token cross-entropy). The script checks that
the loss fell and that the trained weights can be sampled::

    python examples/training_loop.py
"""

from __future__ import annotations

from _shared import example_model, expect, next_token_datum

import tinkjax
from tinkjax import types

TEXT = "The quick brown fox jumps over the lazy dog."


def main(steps: int = 30, base_model: str | None = None) -> list[float]:
    """Train for ``steps`` steps; returns the loss per token of every step."""
    model = base_model or example_model()
    losses: list[float] = []
    with tinkjax.ServiceClient() as service:
        training = service.create_lora_training_client(model, rank=8, seed=0).result()
        tokenizer = training.get_tokenizer()
        datum = next_token_datum(tokenizer.encode(TEXT))
        n_tokens = len(datum.loss_fn_inputs["target_tokens"].to_numpy())
        for step in range(steps):
            fb = training.forward_backward([datum], "cross_entropy")
            training.optim_step(types.AdamParams(learning_rate=2e-2)).result()
            loss = fb.result().metrics["loss:sum"] / n_tokens
            losses.append(loss)
            print(f"step {step:3d}  loss/token {loss:.4f}")
        path = training.save_state("training-loop-final").result().path
        print(f"saved the training state to {path}")
        sampler = training.save_weights_and_get_sampling_client(name="training-loop").result()
        prompt = types.ModelInput.from_ints(tokenizer.encode(TEXT[:10]))
        out = sampler.sample(
            prompt,
            num_samples=1,
            sampling_params=types.SamplingParams(max_tokens=20, temperature=0.0),
        ).result()
        print(f"greedy sample: {TEXT[:10]!r} + {tokenizer.decode(out.sequences[0].tokens)!r}")
    expect(losses[-1] < losses[0], f"the loss did not fall: {losses[0]:.4f} -> {losses[-1]:.4f}")
    expect(path.startswith("tinker://"), f"unexpected checkpoint path {path!r}")
    expect(len(out.sequences[0].tokens) > 0, "the sample is empty")
    return losses


if __name__ == "__main__":
    main()
