"""The step's spec: checked once when built, frozen, hashed on what the program depends on."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

import tinkjax.regularizers as R
from tinkjax.engine import (
    Bucketing,
    CustomLossSpec,
    DatumLoss,
    EngineInputError,
    LossBatch,
    PackedLoss,
    as_spec,
    compute_custom_loss,
    trace_count,
)

from .data import rl_data, step_data


def _datum_loss(data: list[dict[str, jax.Array]], logprobs: list[jax.Array]) -> jax.Array:
    return sum(jax.numpy.sum(lp) for lp in logprobs)  # type: ignore[return-value]


def _packed(batch: LossBatch, lp: jax.Array) -> jax.Array:
    return batch.token_sum(lp)


def test_spec_validation_errors_name_the_option() -> None:
    with pytest.raises(EngineInputError, match="duplicate regularizer name 'l1'"):
        CustomLossSpec(None, regularizers=[R.l1(weight=1.0), R.l1(weight=2.0)])
    with pytest.raises(EngineInputError, match="unknown key"):
        CustomLossSpec("ppo", loss_fn_config={"clip": 1.0})
    with pytest.raises(EngineInputError, match="unknown loss 'ppx'"):
        CustomLossSpec("ppx")
    with pytest.raises(EngineInputError, match="only accepted with a built-in loss name"):
        CustomLossSpec(None, loss_fn_config={"beta": 1.0})
    with pytest.raises(EngineInputError, match="loss must be a built-in loss name"):
        CustomLossSpec(3)  # type: ignore[arg-type]
    with pytest.raises(EngineInputError, match=r"regularizers\[0\] must be"):
        CustomLossSpec(regularizers=["l1"])  # type: ignore[list-item]
    with pytest.raises(EngineInputError, match="norm_method must be 'grads' or 'vmap'"):
        CustomLossSpec(norm_method="jacrev")  # type: ignore[arg-type]
    with pytest.raises(EngineInputError, match="dtype must be float32 or float64, got float16"):
        CustomLossSpec(dtype=np.float16)
    with pytest.raises(EngineInputError, match=r"bucketing must be a tinkjax\.engine\.Bucketing"):
        CustomLossSpec(bucketing={"chunk": 64})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"unexpected keyword arguments \['track_norms'\]"):
        CustomLossSpec(track_norms=True)  # type: ignore[call-arg]
    inputs, lps = step_data()  # the entry points build the same spec from their keywords
    with pytest.raises(EngineInputError, match="duplicate regularizer name 'l1'"):
        compute_custom_loss(inputs, lps, None, regularizers=[R.l1(weight=1.0), R.l1(weight=2.0)])
    with pytest.raises(EngineInputError, match="unknown key"):
        compute_custom_loss(inputs, lps, "ppo", loss_fn_config={"clip": 1.0})


def test_spec_holds_the_resolved_base_and_options() -> None:
    spec = CustomLossSpec(
        "ppo", regularizers=(R.l2(weight=0.5),), loss_fn_config={"clip_high_threshold": 1.3}
    )
    assert isinstance(spec.base, PackedLoss)
    assert spec.base.requires == ("target_tokens", "logprobs", "advantages")
    assert dict(spec.loss_fn_config) == {"clip_low_threshold": 0.8, "clip_high_threshold": 1.3}
    assert spec.regularizers == (R.l2(weight=0.5),)
    assert (spec.track_grad_norms, spec.norm_method) == (False, "vmap")
    assert spec.dtype == np.dtype(np.float32)
    assert spec.bucketing == Bucketing()
    assert not spec.needs_prepare
    bare = CustomLossSpec(_datum_loss, regularizers=[R.l1(weight=1.0)])
    assert bare.loss == bare.base == DatumLoss(_datum_loss)
    assert isinstance(bare.regularizers, tuple)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.track_grad_norms = True  # type: ignore[misc]


def test_equal_content_is_an_equal_spec_and_the_same_program() -> None:
    def build(weight: float, center: float, clip: float) -> CustomLossSpec:
        regs = [R.l1(weight=weight, center=center), R.sequence_variance(weight=2.0 * weight)]
        return CustomLossSpec(
            "ppo",
            regularizers=regs,
            loss_fn_config={"clip_low_threshold": clip},
            track_grad_norms=True,
            dtype="float32",
        )

    first = build(0.1, -0.5, 0.8)
    same = build(0.1, -0.5, 0.8)
    swept = build(0.7, -2.0, 0.6)  # weights, parameters and config are traced arrays
    assert first == same == swept
    assert hash(first) == hash(same) == hash(swept)
    assert len({first, same, swept}) == 1
    assert first != dataclasses.replace(first, track_grad_norms=False)
    assert first != dataclasses.replace(first, norm_method="grads")
    assert first != CustomLossSpec("importance_sampling", regularizers=first.regularizers)
    assert first != dataclasses.replace(first, bucketing=Bucketing(token_growth=2.0))
    assert CustomLossSpec(PackedLoss(_packed)) == CustomLossSpec(PackedLoss(_packed))

    inputs, lps = rl_data((7, 30, 1, 19), seed=2)
    ran = compute_custom_loss(inputs, lps, first)
    before = trace_count()
    again = compute_custom_loss(inputs, lps, same)
    other = compute_custom_loss(inputs, lps, swept)
    assert trace_count() == before  # a new spec of equal structure hits the compiled program
    assert again.loss_total == ran.loss_total
    assert other.regularizers["l1"].weight == 0.7
    assert other.loss_total != ran.loss_total


def test_as_spec_takes_a_spec_or_builds_one() -> None:
    spec = CustomLossSpec("cross_entropy", regularizers=[R.l1(weight=1.0)])
    assert as_spec(spec) is spec
    assert as_spec("cross_entropy", regularizers=[R.l1(weight=1.0)]) == spec
    assert as_spec() == CustomLossSpec()
    with pytest.raises(EngineInputError, match=r"a CustomLossSpec and the options \['dtype'\]"):
        as_spec(spec, dtype=np.float32)
