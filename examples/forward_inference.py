"""Forward-only inference: per-token logprobs without a backward pass, for your own loss.

``TrainingClient.forward`` returns the target tokens' logprobs; the script turns them into
NumPy arrays and computes a custom loss from them (per-token NLL, perplexity, the weakest
token). It checks the numbers three ways: the server's ``loss:sum`` equals ``−Σ w·logprob``
computed here, a second forward pass gives the same logprobs (nothing was trained), and a
fresh LoRA adapter (which starts as the identity) agrees with the base model's
``compute_logprobs``::

    python examples/forward_inference.py
"""

from __future__ import annotations

import numpy as np
from _shared import example_model, expect, next_token_datum

import tinkjax

TEXTS = ["Forward passes are cheap.", "Logprobs tell you how surprised the model is."]


def main(base_model: str | None = None) -> dict[str, float]:
    """Runs the forward passes; returns the NLL and perplexity of each text."""
    model = base_model or example_model()
    report: dict[str, float] = {}
    with tinkjax.ServiceClient() as service:
        training = service.create_lora_training_client(model, rank=4, seed=0).result()
        tokenizer = training.get_tokenizer()
        encoded = [tokenizer.encode(t) for t in TEXTS]
        data = [next_token_datum(tokens) for tokens in encoded]
        out = training.forward(data, "cross_entropy").result()
        again = training.forward(data, "cross_entropy").result()
        base = service.create_sampling_client(base_model=model).result()
        nll_total = 0.0
        for text, tokens, d, o, o2 in zip(
            TEXTS, encoded, data, out.loss_fn_outputs, again.loss_fn_outputs, strict=True
        ):
            lp = o["logprobs"].to_numpy().astype(np.float64)
            w = d.loss_fn_inputs["weights"].to_numpy().astype(np.float64)
            nll = float(-(w * lp).sum())
            nll_total += nll
            ppl = float(np.exp(nll / w.sum()))
            worst = int(np.argmin(lp))
            print(f"{text!r}: NLL {nll:.3f}, perplexity {ppl:.2f}, weakest token "
                  f"{tokenizer.decode([tokens[worst + 1]])!r} ({lp[worst]:.2f})")  # fmt: skip
            report[text] = ppl
            expect(np.array_equal(lp, o2["logprobs"].to_numpy()), "forward is not deterministic")
            ref = base.compute_logprobs(tinkjax.ModelInput.from_ints(tokens)).result()[1:]
            expect(
                np.allclose(lp, np.asarray(ref, np.float64), atol=2e-3),
                f"forward and the base model's compute_logprobs disagree for {text!r}",
            )
        server_loss = out.metrics["loss:sum"]
        print(f"server loss:sum {server_loss:.4f}, computed here {nll_total:.4f}")
        expect(abs(server_loss - nll_total) <= 1e-3 * max(1.0, abs(nll_total)),
               f"loss:sum {server_loss} != -sum(w*logprobs) {nll_total}")  # fmt: skip
    return report


if __name__ == "__main__":
    main()
