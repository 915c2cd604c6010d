"""Server-side custom losses in the runtime: exact gradients (float64), per-datum shapes
without recompiling the model, forward-only, and refused inputs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import msgspec
import numpy as np
import pytest

from tinkjax.losses import LossGraph, parse_loss_graph
from tinkjax.models import DatumArrays, FwdBwdItem, ModelRuntime, trace_counts
from tinkjax.types import CustomLossGraph, CustomLossInput

from .helpers import nonzero_b


def _graph(nodes: list[dict[str, Any]], ranks: dict[str, int]) -> LossGraph:
    wire = msgspec.convert({"nodes": nodes}, CustomLossGraph)
    inputs = [CustomLossInput(name=n, rank=r) for n, r in ranks.items()]  # type: ignore[arg-type]
    return parse_loss_graph(wire, inputs, name="loss")


def _node(op: str, name: str, target: str, *args: Any) -> dict[str, Any]:
    return {"op": op, "name": name, "target": target, "args": list(args)}


def R(name: str) -> dict[str, str]:
    return {"ref": name}


# -(logprobs * weights).sum(): the built-in cross_entropy, per datum.
NLL = _graph(
    [
        _node("placeholder", "logprobs", "logprobs"),
        _node("placeholder", "weights", "weights"),
        _node("call_function", "m", "operator.mul", R("logprobs"), R("weights")),
        _node("call_method", "s", "sum", R("m")),
        _node("call_function", "n", "operator.neg", R("s")),
        _node("output", "output", "output", {"tuple": [R("n"), {"dict": {}}]}),
    ],
    {"logprobs": 1, "weights": 1},
)

# mean over the datum's own positions of exp(logprobs) * scale: padding would change the mean,
# so this checks that each datum is evaluated at its true length.
MEAN_PROB = _graph(
    [
        _node("placeholder", "logprobs", "logprobs"),
        _node("placeholder", "scale", "scale"),
        _node("call_function", "e", "torch.exp", R("logprobs")),
        _node("call_method", "m", "mean", R("e")),
        _node("call_function", "x", "operator.mul", R("m"), R("scale")),
        _node("output", "output", "output", {"tuple": [R("x"), {"dict": {}}]}),
    ],
    {"logprobs": 1, "scale": 0},
)


def test_custom_nll_gradient_equals_cross_entropy_in_float64(
    runtime64: ModelRuntime, random_tokens: Callable[[int, int], np.ndarray]
) -> None:
    with jax.enable_x64(True):
        rt = runtime64
        nonzero_b(rt, "c-custom", 7)
        nonzero_b(rt, "c-builtin", 7)
        rng = np.random.default_rng(0)
        data = []
        for i, n in enumerate((12, 20, 5)):
            toks = random_tokens(30 + i, n + 1)
            data.append(
                DatumArrays(toks[:-1], {"target_tokens": toks[1:], "weights": rng.normal(size=n)})
            )
        custom = rt.forward_backward(
            [FwdBwdItem("c-custom", data, "custom", custom_loss=NLL)], forward_only=False
        )[0]
        builtin = rt.forward_backward(
            [FwdBwdItem("c-builtin", data, "cross_entropy")], forward_only=False
        )[0]
        assert custom.metrics["loss:sum"] == pytest.approx(builtin.metrics["loss:sum"], rel=1e-12)
        got, want = rt.accumulated_gradients("c-custom"), rt.accumulated_gradients("c-builtin")
        for key in want:
            np.testing.assert_allclose(got[key], want[key], rtol=1e-10, atol=1e-14, err_msg=key)
        for c, b in zip(custom.outputs, builtin.outputs, strict=True):
            np.testing.assert_array_equal(c["logprobs"], b["logprobs"])
            # the datum's loss sits at its first position
            assert c["elementwise_loss"][0] == pytest.approx(b["elementwise_loss"].sum(), rel=1e-6)


def test_each_datum_sees_its_own_length_and_lengths_do_not_recompile_the_model(
    runtime: ModelRuntime, random_tokens: Callable[[int, int], np.ndarray]
) -> None:
    rt = runtime
    rt.create_adapter("mean-prob", rank=4, seed=1)

    def datum(seed: int, n: int, scale: float) -> DatumArrays:
        toks = random_tokens(seed, n + 1)
        return DatumArrays(toks[:-1], {"target_tokens": toks[1:], "scale": np.float32(scale)})

    rt.forward_backward(
        [FwdBwdItem("mean-prob", [datum(1, 9, 1.0)], "custom", custom_loss=MEAN_PROB)],
        forward_only=False,
    )
    before = trace_counts()
    for lengths in [(7, 13), (3, 30, 17), (20,)]:
        data = [datum(40 + n, n, 0.5 + n) for n in lengths]
        out = rt.forward_backward(
            [FwdBwdItem("mean-prob", data, "custom", custom_loss=MEAN_PROB)], forward_only=True
        )[0]
        for d, o, n in zip(data, out.outputs, lengths, strict=True):
            assert o["logprobs"].shape == (n,)
            want = np.exp(o["logprobs"].astype(np.float64)).mean() * float(
                d.loss_fn_inputs["scale"]
            )
            assert o["elementwise_loss"][0] == pytest.approx(want, rel=1e-5)
        rt.forward_backward(
            [FwdBwdItem("mean-prob", data, "custom", custom_loss=MEAN_PROB)], forward_only=False
        )
    after = trace_counts()
    for program in ("logprobs_vjp", "vjp_backward", "forward_backward", "forward"):
        assert after.get(program, 0) == before.get(program, 0), program


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"weights": np.array([1.0, np.nan, 1.0])}, "non-finite"),
        ({"weights": np.ones((3, 1))}, "rank 2"),
        ({"weights": None}, "missing"),
        ({"target_tokens": np.array([[1], [2], [3]])}, "declared logprobs with rank 1"),
        ({"target_tokens": np.array([1, 2, 999])}, "999"),
    ],
)
def test_bad_datums_are_refused_before_any_computation(
    runtime: ModelRuntime, change: dict[str, Any], named: str
) -> None:
    rt = runtime
    if not rt.has_adapter("refuse"):
        rt.create_adapter("refuse", rank=4, seed=2)
    inputs: dict[str, Any] = {"target_tokens": np.array([1, 2, 3]), "weights": np.ones(3)}
    inputs.update(change)
    inputs = {k: v for k, v in inputs.items() if v is not None}
    bad = DatumArrays(np.array([5, 6, 7]), inputs)
    before = trace_counts()
    with pytest.raises(ValueError, match=named):
        rt.forward_backward(
            [FwdBwdItem("refuse", [bad], "custom", custom_loss=NLL)], forward_only=False
        )
    assert trace_counts() == before
    assert all(not np.any(v) for v in rt.accumulated_gradients("refuse").values())
