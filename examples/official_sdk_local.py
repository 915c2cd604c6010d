"""The official ``tinker`` SDK, unchanged, against tinkjax's local backend.

Needs the official SDK (``pip install tinker``; it is in tinkjax's ``dev`` extra). The same
script runs against the Tinker service when ``TINKER_BASE_URL``/``TINKER_API_KEY`` point there
and the base model is one the service offers::

    python examples/official_sdk_local.py
"""

from __future__ import annotations

import os

import numpy as np

from tinkjax.server import start


def main(base_model: str = "tinkjax/bytelm-micro", steps: int = 5) -> list[float]:
    """A LoRA fine-tune through the official SDK; returns the loss of every step."""
    with start() as server:
        # Explicit arguments (TINKER_BASE_URL / TINKER_API_KEY in the environment work too).
        connect = {
            "base_url": server.base_url,
            "api_key": os.environ.get("TINKER_API_KEY", "tml-local"),
        }
        import tinker
        from tinker import types

        text = list(b"the official SDK talks to a local JAX backend. ")
        datum = types.Datum(
            model_input=types.ModelInput.from_ints(text[:-1]),
            loss_fn_inputs={"target_tokens": text[1:], "weights": [1.0] * (len(text) - 1)},
        )
        losses = []
        with tinker.ServiceClient(**connect) as service:
            training = service.create_lora_training_client(base_model=base_model, rank=8).result()
            for step in range(steps):
                out = training.forward_backward([datum], "cross_entropy").result()
                training.optim_step(types.AdamParams(learning_rate=1e-2)).result()
                losses.append(out.metrics["loss:sum"])
                print(f"step {step}: loss {losses[-1]:.3f}")
            training.save_state("official").result()
            sampler = training.save_weights_and_get_sampling_client().result()
            response = sampler.sample(
                prompt=types.ModelInput.from_ints(text[:12]),
                num_samples=1,
                sampling_params=types.SamplingParams(max_tokens=20, temperature=0.0),
            ).result()
            tokens = np.asarray(response.sequences[0].tokens)
            print(
                "sample:",
                bytes(text[:12] + [t for t in tokens.tolist() if t < 256]).decode(
                    "utf-8", "replace"
                ),
            )
            rest = tinker.RestClient(**connect)
            listed = rest.list_checkpoints(training.model_id).result()
            print("checkpoints:", [c.checkpoint_id for c in listed.checkpoints])
    return losses


if __name__ == "__main__":
    main()
