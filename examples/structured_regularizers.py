"""Structured regularizers, offline: ``loss = base + Σ wᵢ·regᵢ`` on mock logprobs, no server.

The engine composes a cross-entropy base loss with an L1 sparsity term, an entropy bonus and a
sequence-variance penalty in one compiled program and returns the per-term breakdown (value,
weighted contribution, gradient norm) and ∂loss/∂logprobs. The script checks every number
against an independent float64 NumPy computation (to float32 precision) of the same formulas, and the gradient
against central finite differences::

    python examples/structured_regularizers.py
"""

from __future__ import annotations

import numpy as np
from _shared import expect

import tinkjax.regularizers as R
from tinkjax.engine import compute_custom_loss

WEIGHTS = {"l1_sparsity": 0.01, "entropy": -0.02, "sequence_variance": 0.5}


def reference(lps: list[np.ndarray]) -> dict[str, float]:
    """The same loss in float64 NumPy (weights are all 1)."""
    flat = np.concatenate(lps)
    means = np.array([lp.mean() for lp in lps])
    values = {
        "l1_sparsity": float(np.abs(flat).sum()),
        "entropy": float((-flat).mean()),
        "sequence_variance": float(((means - means.mean()) ** 2).mean()),
    }
    base = float(-flat.sum())
    total = base + sum(WEIGHTS[k] * v for k, v in values.items())
    return {"base": base, "total": total, **values}


def main(seed: int = 0) -> dict[str, float]:
    """Computes the composed loss on random logprobs; returns its summary."""
    rng = np.random.default_rng(seed)
    lengths = [5, 8, 3]
    lps = [np.log(rng.uniform(0.05, 0.95, n)) for n in lengths]
    inputs = [
        {"target_tokens": rng.integers(0, 256, n), "weights": np.ones(n, np.float32)}
        for n in lengths
    ]
    regularizers = [
        R.l1(weight=WEIGHTS["l1_sparsity"], name="l1_sparsity"),
        R.entropy(weight=WEIGHTS["entropy"]),
        R.sequence_variance(weight=WEIGHTS["sequence_variance"]),
    ]
    out = compute_custom_loss(
        inputs, lps, "cross_entropy", regularizers=regularizers, track_grad_norms=True
    )
    ref = reference(lps)
    print(f"{'term':<18} {'weight':>7} {'value':>10} {'contribution':>13} {'grad norm':>10}")
    print(f"{'cross_entropy':<18} {1:>7} {out.base_loss:>10.4f} {out.base_loss:>13.4f} "
          f"{out.base_grad_norm:>10.4f}")  # fmt: skip
    for name, reg in out.regularizers.items():
        print(f"{name:<18} {reg.weight:>7g} {reg.value:>10.4f} {reg.contribution:>13.4f} "
              f"{reg.grad_norm:>10.4f}")  # fmt: skip
        expect(np.isclose(reg.value, ref[name], rtol=1e-5), f"{name}: {reg.value} != {ref[name]}")
        expect(np.isclose(reg.contribution, reg.weight * reg.value, rtol=1e-6),
               f"{name}: contribution is not weight * value")  # fmt: skip
    print(f"{'total':<18} {'':>7} {'':>10} {out.loss_total:>13.4f} {out.total_grad_norm:>10.4f}")
    expect(np.isclose(out.base_loss, ref["base"], rtol=1e-5), "base loss differs from NumPy")
    expect(np.isclose(out.loss_total, ref["total"], rtol=1e-5), "total differs from NumPy")
    expect(np.isclose(out.loss_total, out.base_loss + out.regularizer_total, rtol=1e-6),
           "loss_total != base_loss + regularizer_total")  # fmt: skip
    # the gradient against central differences of the NumPy reference
    eps = 1e-6
    for i, lp in enumerate(lps):
        for t in range(len(lp)):
            up = [x.copy() for x in lps]
            down = [x.copy() for x in lps]
            up[i][t] += eps
            down[i][t] -= eps
            fd = (reference(up)["total"] - reference(down)["total"]) / (2 * eps)
            expect(abs(out.gradients[i][t] - fd) < 1e-4 * max(1.0, abs(fd)),
                   f"d loss / d lp[{i}][{t}] = {out.gradients[i][t]}, finite difference {fd}")  # fmt: skip
    print("values match NumPy and the gradient matches finite differences")
    return out.summary()


if __name__ == "__main__":
    main()
