"""Basic sampling: a ``SamplingClient`` on a base model, several completions, decoded.

The script samples with a seed twice (the same seed gives the same completions), greedily
(``temperature=0`` makes every sample identical), and checks each completion's length, stop
reason and logprobs::

    python examples/sampling_basic.py
"""

from __future__ import annotations

import math

from _shared import example_model, expect

import tinkjax
from tinkjax import types

PROMPT = "Once upon a time"


def main(max_tokens: int = 16, num_samples: int = 3, base_model: str | None = None) -> list[str]:
    """Samples ``num_samples`` completions; returns their text."""
    model = base_model or example_model()
    with tinkjax.ServiceClient() as service:
        sampler = service.create_sampling_client(base_model=model).result()
        tokenizer = sampler.get_tokenizer()
        prompt = types.ModelInput.from_ints(tokenizer.encode(PROMPT))
        params = types.SamplingParams(max_tokens=max_tokens, temperature=0.8, seed=7)
        first = sampler.sample(prompt, num_samples=num_samples, sampling_params=params)
        second = sampler.sample(prompt, num_samples=num_samples, sampling_params=params)
        greedy = sampler.sample(
            prompt, num_samples=2, sampling_params=types.SamplingParams(max_tokens=max_tokens,
                                                                        temperature=0.0)
        )  # fmt: skip
        response = first.result()
        texts = []
        for i, seq in enumerate(response.sequences):
            text = tokenizer.decode(seq.tokens)
            texts.append(text)
            mean_lp = sum(seq.logprobs) / max(len(seq.logprobs), 1)
            print(f"sample {i}: {PROMPT!r} + {text!r}  ({seq.stop_reason}, mean logprob "
                  f"{mean_lp:.2f})")  # fmt: skip
            expect(1 <= len(seq.tokens) <= max_tokens, f"sample {i} has {len(seq.tokens)} tokens")
            expect(seq.stop_reason in ("length", "stop"), f"stop reason {seq.stop_reason!r}")
            expect(all(math.isfinite(x) and x <= 0 for x in seq.logprobs), "bad logprobs")
        expect(len(texts) == num_samples, f"asked {num_samples} samples, got {len(texts)}")
        again = [s.tokens for s in second.result().sequences]
        expect(again == [s.tokens for s in response.sequences], "the same seed sampled differently")
        g = greedy.result().sequences
        expect(g[0].tokens == g[1].tokens, "greedy samples differ")
        print(f"greedy: {PROMPT!r} + {tokenizer.decode(g[0].tokens)!r}")
    return texts


if __name__ == "__main__":
    main()
