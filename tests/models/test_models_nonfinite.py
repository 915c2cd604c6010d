"""Non-finite results are refused by the runtime and leave the adapter exactly as it was."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax.numpy as jnp
import numpy as np
import pytest

from tinkjax.models import (
    AdamHyper,
    DatumArrays,
    FwdBwdItem,
    ModelRuntime,
    NonFiniteResultError,
    SampleJob,
)


def _state(rt: ModelRuntime, adapter: str) -> dict[str, np.ndarray]:
    out = rt.export_state(adapter, include_optimizer=True)
    out.update({f"grad.{k}": v for k, v in rt.accumulated_gradients(adapter).items()})
    return out


def _assert_same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def _datum(ce_datum: Callable[..., DatumArrays], tokens: np.ndarray, weight: float) -> DatumArrays:
    return ce_datum(tokens, np.full(len(tokens) - 1, weight, np.float32))


def test_step_whose_gradient_norm_overflows_is_refused_and_changes_nothing(
    runtime: ModelRuntime,
    ce_datum: Callable[..., DatumArrays],
    random_tokens: Callable[[int, int], np.ndarray],
) -> None:
    rt = runtime
    rt.create_adapter("nf-step", rank=4, seed=1)
    tokens = random_tokens(3, 24)
    # Each gradient entry is finite, but their squares overflow float32: the norm is inf.
    (res,) = rt.forward_backward(
        [FwdBwdItem("nf-step", [_datum(ce_datum, tokens, 1e20)], "cross_entropy")],
        forward_only=False,
    )
    assert res.refused is None
    assert np.isfinite(res.metrics["loss:sum"])
    before = _state(rt, "nf-step")
    with pytest.raises(NonFiniteResultError, match="non-finite"):
        rt.optim_step("nf-step", AdamHyper(learning_rate=1e-3))
    _assert_same(_state(rt, "nf-step"), before)


def test_backward_with_non_finite_loss_is_refused_without_touching_others(
    runtime: ModelRuntime,
    ce_datum: Callable[..., DatumArrays],
    random_tokens: Callable[[int, int], np.ndarray],
) -> None:
    rt = runtime
    for name in ("nf-bad", "nf-good"):
        rt.create_adapter(name, rank=4, seed=2)
    tokens = random_tokens(4, 20)
    bad_before, good_before = _state(rt, "nf-bad"), _state(rt, "nf-good")
    items = [
        FwdBwdItem("nf-bad", [_datum(ce_datum, tokens, 3e38)], "cross_entropy"),
        FwdBwdItem("nf-good", [_datum(ce_datum, tokens, 1.0)], "cross_entropy"),
        FwdBwdItem("nf-good", [_datum(ce_datum, tokens, 0.5)], "cross_entropy"),
    ]
    bad, good, good2 = rt.forward_backward(items, forward_only=False)
    assert bad.refused is not None
    assert "not finite" in bad.refused
    assert (bad.outputs, bad.metrics) == ([], {})
    _assert_same(_state(rt, "nf-bad"), bad_before)
    assert good.refused is None
    assert good2.refused is None
    # The good adapter got exactly its two items' gradients (1.5 x one datum's).
    alone = "nf-alone"
    rt.create_adapter(alone, rank=4, seed=2)
    rt.forward_backward(
        [FwdBwdItem(alone, [_datum(ce_datum, tokens, 1.5)], "cross_entropy")], forward_only=False
    )
    got = rt.accumulated_gradients("nf-good")
    want = rt.accumulated_gradients(alone)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-4, atol=1e-6, err_msg=key)
    assert any(np.any(v) for v in got.values())
    assert not any(np.any(good_before[f"grad.{k}"]) for k in got)


def test_bad_item_sharing_an_adapter_with_a_good_one_only_refuses_itself(
    runtime: ModelRuntime,
    ce_datum: Callable[..., DatumArrays],
    random_tokens: Callable[[int, int], np.ndarray],
) -> None:
    rt = runtime
    rt.create_adapter("nf-shared", rank=4, seed=5)
    rt.create_adapter("nf-ref", rank=4, seed=5)
    tokens = random_tokens(6, 16)
    bad, good = rt.forward_backward(
        [
            FwdBwdItem("nf-shared", [_datum(ce_datum, tokens, 3e38)], "cross_entropy"),
            FwdBwdItem("nf-shared", [_datum(ce_datum, tokens, 1.0)], "cross_entropy"),
        ],
        forward_only=False,
    )
    assert bad.refused is not None
    assert good.refused is None
    rt.forward_backward(
        [FwdBwdItem("nf-ref", [_datum(ce_datum, tokens, 1.0)], "cross_entropy")],
        forward_only=False,
    )
    got, want = rt.accumulated_gradients("nf-shared"), rt.accumulated_gradients("nf-ref")
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"eps": 0.0}, "eps"),
        ({"learning_rate": 1e30}, "learning_rate"),
        ({"weight_decay": 1e30}, "weight_decay"),
        ({"learning_rate": float("nan")}, "learning_rate"),
    ],
)
def test_poisonous_hyperparameters_are_refused(values: dict[str, float], field: str) -> None:
    with pytest.raises(ValueError, match=f"adam_params.{field}"):
        AdamHyper(**values)


def test_sampling_from_non_finite_weights_is_refused(runtime: ModelRuntime) -> None:
    rt = runtime
    rt.create_adapter("nf-sample", rank=4, seed=7)
    snap = rt.snapshot("nf-sample")
    poisoned = dataclasses.replace(
        snap, weights={t: (a, jnp.full_like(b, jnp.nan)) for t, (a, b) in snap.weights.items()}
    )
    prompt = np.arange(1, 9, dtype=np.int32)
    ok = rt.sample(SampleJob(snap, prompt, num_samples=2, max_tokens=4, seed=0))
    assert all(np.isfinite(s.logprobs).all() for s in ok.sequences)
    with pytest.raises(NonFiniteResultError, match="non-finite"):
        rt.sample(SampleJob(poisoned, prompt, num_samples=2, max_tokens=4, seed=0))
