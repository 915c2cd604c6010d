"""Float64 checks of the gradient semantics: finite differences, linearity in the weights,
zero-sum weights, and accumulation across calls."""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np

from tinkjax.models import AdamHyper, DatumArrays, FwdBwdItem, ModelRuntime

from .helpers import nonzero_b


def _loss(
    rt: ModelRuntime,
    name: str,
    datums: list[DatumArrays],
    loss: str = "cross_entropy",
    **cfg: float,
) -> float:
    (res,) = rt.forward_backward([FwdBwdItem(name, datums, loss, cfg)], forward_only=True)
    return res.metrics["loss:sum"]


def _grad(
    rt: ModelRuntime,
    name: str,
    datums: list[DatumArrays],
    loss: str = "cross_entropy",
    **cfg: float,
) -> dict[str, np.ndarray]:
    rt.forward_backward([FwdBwdItem(name, datums, loss, cfg)], forward_only=False)
    grads = rt.accumulated_gradients(name)
    rt.optim_step(name, AdamHyper(learning_rate=0.0))  # clear the accumulator
    return grads


def test_gradient_matches_finite_differences(
    runtime64: ModelRuntime, random_tokens: Callable[[int, int], np.ndarray]
) -> None:
    with jax.enable_x64(True):
        rt = runtime64
        nonzero_b(rt, "fd", 0)
        toks = random_tokens(1, 21)
        rng = np.random.default_rng(2)
        sampler_lp = -rng.uniform(3, 7, size=20)
        rl = {"target_tokens": toks[1:], "logprobs": sampler_lp, "advantages": rng.normal(size=20)}
        # Losses whose gradient is defined with stop-gradients (cispo, gspo) equal the
        # derivative of their value only where those do not matter: cispo with its ratio
        # clipped to a constant, gspo with one advantage per sequence and no clipping.
        cases = [
            ("cross_entropy", {}, {"target_tokens": toks[1:], "weights": rng.normal(size=20)}),
            ("importance_sampling", {}, rl),
            ("ppo", {"clip_low_threshold": 0.0, "clip_high_threshold": 1e9}, rl),
            ("cispo", {"clip_low_threshold": 0.9, "clip_high_threshold": 0.9}, rl),
            ("dro", {"beta": 0.1}, rl),
            ("gspo", {"clip_low_threshold": 0.0, "clip_high_threshold": 1e9},
             {**rl, "advantages": np.full(20, 0.7), "sequence_ratio_mask": np.ones(20)}),
        ]  # fmt: skip
        for loss, cfg, inputs in cases:
            datum = DatumArrays(toks[:-1], inputs)
            grads = _grad(rt, "fd", [datum], loss, **cfg)
            assert any(np.any(g) for g in grads.values()), loss
            state = rt.export_state("fd", include_optimizer=False)
            info = rt.adapter_info("fd")
            for key, index in (
                ("lora.q.a", (1, 3, 2)),
                ("lora.down.b", (0, 1, 5)),
                ("lora.lm_head.b", (0, 2, 7)),
                ("lora.up.a", (0, 0, 0)),
            ):
                eps = 1e-6
                values = []
                for sign in (1, -1):
                    bumped = {k: v.copy() for k, v in state.items()}
                    bumped[key][index] += sign * eps
                    rt.import_state("fd", bumped, info=info, include_optimizer=False)
                    values.append(_loss(rt, "fd", [datum], loss, **cfg))
                fd = (values[0] - values[1]) / (2 * eps)
                np.testing.assert_allclose(
                    grads[key][index], fd, rtol=1e-5, atol=1e-8, err_msg=f"{loss} {key}"
                )
            rt.import_state("fd", state, info=info, include_optimizer=False)


def test_weight_scaling_zero_sums_and_accumulation(
    runtime64: ModelRuntime, random_tokens: Callable[[int, int], np.ndarray]
) -> None:
    with jax.enable_x64(True):
        rt = runtime64
        nonzero_b(rt, "acc", 3)
        toks = [random_tokens(10 + i, 17) for i in range(3)]
        rng = np.random.default_rng(4)
        weights = [rng.normal(size=16) for _ in range(3)]

        def datum(i: int, scale: float = 1.0, w: np.ndarray | None = None) -> DatumArrays:
            return DatumArrays(
                toks[i][:-1],
                {"target_tokens": toks[i][1:], "weights": (weights[i] if w is None else w) * scale},
            )

        base = _grad(rt, "acc", [datum(0)])
        scaled = _grad(rt, "acc", [datum(0, scale=-2.5)])
        for key, g in base.items():
            np.testing.assert_allclose(scaled[key], -2.5 * g, rtol=1e-10, atol=1e-14)

        # Weights summing to zero: nothing divides by their sum, the gradient stays O(|w|).
        zero_sum = np.tile([1.0, -1.0], 8)
        assert zero_sum.sum() == 0
        g0 = _grad(rt, "acc", [datum(0, w=zero_sum)])
        norm = np.sqrt(sum(np.sum(v**2) for v in g0.values()))
        assert 0 < norm < 1e3

        # Two calls then one step == one call on the union, then one step.
        state = rt.export_state("acc", include_optimizer=True)
        info = rt.adapter_info("acc")
        hyper = AdamHyper(learning_rate=1e-2, weight_decay=0.01, grad_clip_norm=0.5)
        rt.forward_backward(
            [FwdBwdItem("acc", [datum(0)], "cross_entropy", {})], forward_only=False
        )
        rt.forward_backward(
            [FwdBwdItem("acc", [datum(1), datum(2)], "cross_entropy", {})], forward_only=False
        )
        split_metrics = rt.optim_step("acc", hyper)
        split = rt.export_state("acc", include_optimizer=True)
        rt.import_state("acc", state, info=info, include_optimizer=True)
        rt.forward_backward(
            [FwdBwdItem("acc", [datum(0), datum(1), datum(2)], "cross_entropy", {})],
            forward_only=False,
        )
        union_metrics = rt.optim_step("acc", hyper)
        union = rt.export_state("acc", include_optimizer=True)
        np.testing.assert_allclose(
            split_metrics["grad_norm:mean"], union_metrics["grad_norm:mean"], rtol=1e-12
        )
        assert union_metrics["grad_norm:mean"] > 0.5  # so clipping was active
        for key, value in union.items():
            np.testing.assert_allclose(split[key], value, rtol=1e-10, atol=1e-14, err_msg=key)
        assert int(union["adam.step"]) == int(state["adam.step"]) + 1
