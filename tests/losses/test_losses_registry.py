"""The loss registry: wire names, inputs, config validation, and the metric helper."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tinkjax import losses
from tinkjax.losses import LOSS_FUNCTIONS, compute_elementwise_loss, loss_metrics

LP = jnp.asarray([-1.0, -0.5, -2.0])
RL = {"target_tokens": np.zeros(3, np.int64), "logprobs": np.array([-1.1, -0.4, -2.0]),
      "advantages": np.array([1.0, -1.0, 0.5])}  # fmt: skip


def test_registry_contents() -> None:
    assert sorted(LOSS_FUNCTIONS) == [
        "cispo",
        "cross_entropy",
        "dro",
        "gspo",
        "importance_sampling",
        "ppo",
        "stable_reinforce",
    ]
    assert LOSS_FUNCTIONS["cross_entropy"].required_inputs == ("target_tokens", "weights")
    assert LOSS_FUNCTIONS["ppo"].input_arguments["logprobs"] == "sampler_logprobs"
    assert dict(LOSS_FUNCTIONS["cispo"].config_defaults) == {
        "clip_low_threshold": 0.8, "clip_high_threshold": 1.2,
    }  # fmt: skip
    assert LOSS_FUNCTIONS["dro"].required_config == ("beta",)
    assert "sequence_ratio_mask" in LOSS_FUNCTIONS["gspo"].required_inputs
    stable = LOSS_FUNCTIONS["stable_reinforce"]
    assert stable.server_filled == ("logprobs", "sampled_mask")
    assert set(stable.server_filled) <= set(stable.required_inputs)
    assert dict(stable.config_defaults) == {"clip_high_threshold": 2.0}
    assert all(not d.server_filled for n, d in LOSS_FUNCTIONS.items() if n != "stable_reinforce")


def test_dispatch_matches_direct_calls_under_jit() -> None:
    got = jax.jit(lambda lp: compute_elementwise_loss("ppo", lp, RL, {"clip_high_threshold": 1.5}))(
        LP
    )
    want = losses.ppo(
        LP, sampler_logprobs=RL["logprobs"], advantages=RL["advantages"], clip_high_threshold=1.5
    )
    np.testing.assert_allclose(got, want)
    ce = compute_elementwise_loss("cross_entropy", LP, {"weights": np.ones(3)}, None)
    np.testing.assert_allclose(ce, -LP)


def test_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="unknown loss 'nope'"):
        compute_elementwise_loss("nope", LP, RL, {})
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['clip_low'\]"):
        compute_elementwise_loss("ppo", LP, RL, {"clip_low": 0.5})
    with pytest.raises(ValueError, match="requires \\['beta'\\]"):
        compute_elementwise_loss("dro", LP, RL, {})
    with pytest.raises(ValueError, match="requires \\['advantages'\\]"):
        compute_elementwise_loss("importance_sampling", LP, {"logprobs": RL["logprobs"]}, {})
    with pytest.raises(ValueError, match="accepted: none"):
        compute_elementwise_loss("cross_entropy", LP, {"weights": np.ones(3)}, {"beta": 1.0})
    with pytest.raises(ValueError, match="sequence_ratio_mask"):
        losses.check_loss_inputs("gspo", set(RL))
    with pytest.raises(ValueError, match="sampled_mask"):
        losses.check_loss_inputs("stable_reinforce", set(RL))
    for bad in (0.0, -1.0):
        with pytest.raises(ValueError, match=r"clip_high_threshold'\]: expected a number > 0"):
            losses.resolve_loss_config("stable_reinforce", {"clip_high_threshold": bad})


def test_loss_metrics_is_a_plain_sum() -> None:
    metrics = loss_metrics(jnp.asarray([[1.0, -3.0], [0.5, 0.0]]))
    assert list(metrics) == ["loss:sum"]
    assert float(metrics["loss:sum"]) == -1.5


def test_all_is_sorted_and_complete() -> None:
    assert len(set(losses.__all__)) == len(losses.__all__)  # order: tests/test_packaging.py
    assert all(hasattr(losses, name) for name in losses.__all__)
