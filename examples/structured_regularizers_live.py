"""Structured regularizers, live: ``forward_backward_custom`` with a regularizer pipeline.

The custom loss ``cross_entropy + 0.01·L1 − 0.02·entropy + 0.5·sequence_variance`` is computed
by the engine on the logprobs of the backend's forward pass and sent back as the weights of a
linearised cross-entropy pass, so the backend trains on its gradient. The script checks the
breakdown (``loss_total = base + Σ weight·value``), that the base loss is the NLL of a plain
``forward`` pass on the same weights, and that training on it lowers the loss::

    python examples/structured_regularizers_live.py
"""

from __future__ import annotations

import math

import numpy as np
from _shared import example_model, expect, next_token_datum

import tinkjax
import tinkjax.regularizers as R
from tinkjax import types

TEXTS = ["Regularizers shape the loss.", "Each term is reported on its own.", "Short one."]


def main(steps: int = 8, base_model: str | None = None) -> list[float]:
    """Trains for ``steps`` steps; returns ``loss_total`` of every step."""
    model = base_model or example_model()
    regularizers = [
        R.l1(weight=0.01, name="l1_sparsity"),
        R.entropy(weight=-0.02),
        R.sequence_variance(weight=0.5),
    ]
    totals: list[float] = []
    with tinkjax.ServiceClient() as service:
        training = service.create_lora_training_client(model, rank=8, seed=0).result()
        tokenizer = training.get_tokenizer()
        data = [next_token_datum(tokenizer.encode(t)) for t in TEXTS]
        for step in range(steps):
            plain = training.forward(data, "cross_entropy").result()
            nll = -sum(
                float((o["logprobs"].to_numpy() * d.loss_fn_inputs["weights"].to_numpy()).sum())
                for o, d in zip(plain.loss_fn_outputs, data, strict=True)
            )
            out = training.forward_backward_custom(
                data, "cross_entropy", regularizers=regularizers, track_grad_norms=True
            ).result()
            training.optim_step(types.AdamParams(learning_rate=1e-2)).result()
            terms = ", ".join(
                f"{name} {reg.value:.3f} (x{reg.weight:g} = {reg.contribution:+.4f})"
                for name, reg in out.regularizers.items()
            )
            print(f"step {step}: total {out.loss_total:.3f} = base {out.base_loss:.3f} + {terms}")
            expect(math.isclose(out.base_loss, nll, rel_tol=1e-4),
                   f"base loss {out.base_loss} != forward NLL {nll}")  # fmt: skip
            contributions = sum(r.weight * r.value for r in out.regularizers.values())
            expect(math.isclose(out.loss_total, out.base_loss + contributions, rel_tol=1e-5),
                   "loss_total != base + sum(weight * value)")  # fmt: skip
            expect(all(r.grad_norm is not None and np.isfinite(r.grad_norm)
                       for r in out.regularizers.values()), "a gradient norm is missing")  # fmt: skip
            totals.append(out.loss_total)
    expect(totals[-1] < totals[0], f"the custom loss did not fall: {totals[0]} -> {totals[-1]}")
    return totals


if __name__ == "__main__":
    main()
