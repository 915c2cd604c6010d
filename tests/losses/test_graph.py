"""The custom-loss graph evaluator: values against NumPy under ``jit``, float64 gradients,
no retracing, and refusals naming the node (no torch: graphs are written as the SDK sends
them)."""

from __future__ import annotations

from typing import Any

import chex
import jax
import jax.numpy as jnp
import msgspec
import numpy as np
import pytest
from jax.test_util import check_grads

from tinkjax.losses import LossGraph, LossGraphError, parse_loss_graph
from tinkjax.types import CustomLossGraph, CustomLossInput


def R(name: str) -> dict[str, str]:
    return {"ref": name}


def graph(
    body: list[tuple[str, str, str, list[Any], dict[str, Any]]],
    loss: str,
    ranks: dict[str, int],
    metrics: dict[str, str] | None = None,
) -> LossGraph:
    """A graph from ``(op, name, target, args, kwargs)`` rows after the placeholders."""
    nodes: list[dict[str, Any]] = [{"op": "placeholder", "name": n, "target": n} for n in ranks]
    nodes += [
        {"op": op, "name": name, "target": target, "args": args, "kwargs": kwargs}
        for op, name, target, args, kwargs in body
    ]
    out = {k: R(v) for k, v in (metrics or {}).items()}
    nodes.append(
        {"op": "output", "name": "output", "target": "output",
         "args": [{"tuple": [R(loss), {"dict": out}]}]}
    )  # fmt: skip
    wire = msgspec.convert({"nodes": nodes}, CustomLossGraph)
    inputs = [CustomLossInput(name=n, rank=r) for n, r in ranks.items()]  # type: ignore[arg-type]
    return parse_loss_graph(wire, inputs, name="loss")


# loss = sum(softmax(lp, -1)[:, 0] * w) + logsumexp(lp, 1).mean() - clamp(lp, min=-3).amax()
#        + where(w > 0.5, lp[:, 0], 0).sum() / lp.shape[0] + (lp[-1, :] ** 2).sum() + 0.5 * ref
MIXED = graph(
    [
        ("call_function", "sm", "torch.nn.functional.softmax", [R("logprobs")], {"dim": -1}),
        ("call_function", "sm0", "operator.getitem", [R("sm"), {"tuple": [{"slice": [None, None, None]}, 0]}], {}),
        ("call_function", "a", "operator.mul", [R("sm0"), R("w")], {}),
        ("call_method", "a_sum", "sum", [R("a")], {}),
        ("call_function", "lse", "torch.logsumexp", [R("logprobs"), 1], {}),
        ("call_method", "lse_mean", "mean", [R("lse")], {}),
        ("call_function", "cl", "torch.clamp", [R("logprobs")], {"min": -3.0}),
        ("call_method", "cl_max", "amax", [R("cl")], {}),
        ("call_function", "gt", "operator.gt", [R("w"), 0.5], {}),
        ("call_function", "lp0", "operator.getitem", [R("logprobs"), {"tuple": [{"ellipsis": True}, 0]}], {}),
        ("call_function", "wh", "torch.where", [R("gt"), R("lp0"), 0.0], {}),
        ("call_method", "wh_sum", "sum", [R("wh")], {}),
        ("call_function", "shape", "builtins.getattr", [R("logprobs"), "shape"], {}),
        ("call_function", "t", "operator.getitem", [R("shape"), 0], {}),
        ("call_function", "wh_t", "operator.truediv", [R("wh_sum"), R("t")], {}),
        ("call_function", "last", "operator.getitem", [R("logprobs"), {"tuple": [-1, {"slice": [None, None, None]}]}], {}),
        ("call_function", "sq", "operator.pow", [R("last"), 2], {}),
        ("call_method", "sq_sum", "sum", [R("sq")], {}),
        ("call_function", "half_ref", "operator.mul", [0.5, R("ref")], {}),
        ("call_function", "s1", "operator.add", [R("a_sum"), R("lse_mean")], {}),
        ("call_function", "s2", "operator.sub", [R("s1"), R("cl_max")], {}),
        ("call_function", "s3", "operator.add", [R("s2"), R("wh_t")], {}),
        ("call_function", "s4", "operator.add", [R("s3"), R("sq_sum")], {}),
        ("call_function", "s5", "operator.add", [R("s4"), R("half_ref")], {}),
        ("call_method", "det", "detach", [R("s5")], {}),
    ],
    "s5",
    {"logprobs": 2, "w": 1, "ref": 0},
    {"custom/detached:mean": "det"},
)  # fmt: skip


def mixed_numpy(lp: np.ndarray, w: np.ndarray, ref: float) -> float:
    sm = np.exp(lp - lp.max(-1, keepdims=True))
    sm /= sm.sum(-1, keepdims=True)
    lse = np.log(np.exp(lp).sum(1))
    where = np.where(w > 0.5, lp[:, 0], 0.0).sum() / lp.shape[0]
    return float(
        (sm[:, 0] * w).sum() + lse.mean() - np.maximum(lp, -3).max() + where
        + (lp[-1] ** 2).sum() + 0.5 * ref
    )  # fmt: skip


def _case(rng: np.random.Generator, t: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    lp = np.log(rng.dirichlet(np.ones(k), size=t)).astype(np.float32)
    return lp, rng.uniform(0, 1, t).astype(np.float32), np.asarray(rng.normal(), np.float32)


def test_values_match_numpy_under_jit() -> None:
    rng = np.random.default_rng(0)
    run = jax.jit(MIXED.evaluate)
    for t, k in [(5, 3), (9, 2), (1, 4)]:
        lp, w, ref = _case(rng, t, k)
        loss, metrics = run(jnp.asarray(lp), [jnp.asarray(w), jnp.asarray(ref)])
        assert float(loss) == pytest.approx(mixed_numpy(lp, w, float(ref)), rel=1e-5, abs=1e-5)
        assert float(metrics["custom/detached:mean"]) == pytest.approx(float(loss))


def test_gradient_matches_finite_differences_in_float64() -> None:
    rng = np.random.default_rng(1)
    with jax.enable_x64(True):
        lp, w, ref = (np.asarray(x, np.float64) for x in _case(rng, 6, 3))
        lp[2, 1] = -1.0  # keep the clamp and max away from their kinks

        def loss(x: jax.Array) -> jax.Array:
            return MIXED.evaluate(x, [jnp.asarray(w), jnp.asarray(ref)])[0]

        check_grads(loss, (jnp.asarray(lp),), order=1, modes=["rev"], atol=1e-6, rtol=1e-6)


def test_detach_stops_the_gradient() -> None:
    g = graph(
        [
            ("call_method", "d", "detach", [R("logprobs")], {}),
            ("call_function", "r", "torch.exp", [R("d")], {}),
            ("call_function", "m", "operator.mul", [R("r"), R("logprobs")], {}),
            ("call_method", "s", "sum", [R("m")], {}),
        ],
        "s",
        {"logprobs": 1},
    )
    lp = jnp.asarray([-1.0, -2.0])
    grad = jax.grad(lambda x: g.evaluate(x, [])[0])(lp)
    np.testing.assert_allclose(grad, np.exp([-1.0, -2.0]), rtol=1e-6)


def test_one_trace_per_shape() -> None:
    @jax.jit
    @chex.assert_max_traces(n=2)
    def run(lp: jax.Array, w: jax.Array, ref: jax.Array) -> jax.Array:
        return MIXED.evaluate(lp, [w, ref])[0]

    rng = np.random.default_rng(2)
    for t in (4, 4, 7, 7, 4):
        lp, w, ref = _case(rng, t, 3)
        run(lp, w, ref)


def test_equal_graphs_are_one_static_key() -> None:
    again = graph([("call_method", "s", "sum", [R("logprobs")], {})], "s", {"logprobs": 1})
    same = graph([("call_method", "s", "sum", [R("logprobs")], {})], "s", {"logprobs": 1})
    other = graph([("call_method", "s", "mean", [R("logprobs")], {})], "s", {"logprobs": 1})
    assert again == same
    assert hash(again) == hash(same)
    assert again != other


@pytest.mark.parametrize(
    ("body", "ranks", "shapes", "named"),
    [
        # [3] * [4]: shapes that do not broadcast
        ([("call_function", "m", "operator.mul", [R("logprobs"), R("w")], {}),
          ("call_method", "s", "sum", [R("m")], {})], {"logprobs": 1, "w": 1}, [(3,), (4,)], "'m'"),
        # logprobs[5] of a [3]: torch raises, so must this (JAX would clamp)
        ([("call_function", "s", "operator.getitem", [R("logprobs"), 5], {})],
         {"logprobs": 1}, [(3,)], "'s'"),
        # a loss that is not a scalar
        ([("call_function", "s", "operator.neg", [R("logprobs")], {})], {"logprobs": 1}, [(3,)],
         "scalar"),
        # dim out of range
        ([("call_method", "s", "sum", [R("logprobs"), 3], {})], {"logprobs": 1}, [(3,)], "'s'"),
        # a tensor past the element limit
        ([("call_function", "z", "torch.zeros", [1 << 23], {}),
          ("call_method", "s", "sum", [R("z")], {})], {"logprobs": 1}, [(3,)], "elements"),
        ([("call_function", "z", "torch.arange", [10.0**15], {}),
          ("call_method", "s", "sum", [R("z")], {})], {"logprobs": 1}, [(3,)], "'z'"),
        # integer constants cannot grow without bound
        ([("call_function", "a", "operator.mul", [1 << 40, 1 << 40], {}),
          ("call_method", "s", "sum", [R("logprobs")], {})], {"logprobs": 1}, [(3,)], "'a'"),
        ([("call_function", "a", "operator.pow", [10, 1000], {}),
          ("call_method", "s", "sum", [R("logprobs")], {})], {"logprobs": 1}, [(3,)], "'a'"),
        # a shape times a number would be a sequence of any length
        ([("call_function", "sh", "builtins.getattr", [R("logprobs"), "shape"], {}),
          ("call_function", "a", "operator.mul", [R("sh"), 1 << 30], {}),
          ("call_method", "s", "sum", [R("logprobs")], {})], {"logprobs": 1}, [(3,)], "'a'"),
    ],
)  # fmt: skip
def test_failures_on_shapes_name_the_node(
    body: Any, ranks: dict[str, int], shapes: list[tuple[int, ...]], named: str
) -> None:
    last = body[-1][1]
    g = graph(body, last, ranks)
    structs = [jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes]
    with pytest.raises(LossGraphError, match=named):
        jax.eval_shape(g.evaluate, structs[0], structs[1:])


def test_wrong_rank_is_refused() -> None:
    g = graph([("call_method", "s", "sum", [R("logprobs")], {})], "s", {"logprobs": 1})
    with pytest.raises(LossGraphError, match="declared rank 1"):
        g.evaluate(jnp.zeros((2, 2)), [])
