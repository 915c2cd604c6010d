"""``forward_backward_custom`` with losses in the official SDK's signature
``loss_fn(data, logprobs_list) -> (loss, metrics)`` reading ``datum.loss_fn_inputs[...]``.

A JAX loss in that signature runs through the engine and gives the same accumulated gradient
and the same adapter after ``optim_step`` as the built-in loss it restates (tolerances below);
the rule that tells a torch loss from a JAX one (:func:`tinkjax.client._torch_loss.loss_style`)
is checked on each of its cases. The torch losses themselves run in the compat group
(``tests/compat/test_torch_losses.py``), where torch is installed.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tinkjax.client import ServiceClient
from tinkjax.client._torch_loss import loss_style
from tinkjax.engine import compute_custom_loss
from tinkjax.errors import EngineInputError
from tinkjax.types import AdamParams, Datum, ModelInput, TensorData

MICRO = "tinkjax/bytelm-micro"
ADAM = AdamParams(learning_rate=1e-2)


def _data(seed: int, n: int = 3) -> list[Datum]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        length = 8 + 3 * i
        toks = rng.integers(0, 256, length + 1)
        inputs = {
            "target_tokens": TensorData.from_numpy(toks[1:].astype(np.int64)),
            "weights": TensorData.from_numpy(rng.uniform(0.5, 1.5, length).astype(np.float32)),
        }
        out.append(
            Datum(model_input=ModelInput.from_ints(toks[:-1].tolist()), loss_fn_inputs=inputs)
        )
    return out


def official_ce(data: list[Any], logprobs: list[jax.Array]) -> tuple[jax.Array, dict[str, float]]:
    """Cross-entropy as official-SDK users write it, in JAX: ``datum.loss_fn_inputs[...]``."""
    loss = sum(
        jnp.sum(-lp * datum.loss_fn_inputs["weights"])
        for datum, lp in zip(data, logprobs, strict=True)
    )
    return jnp.asarray(loss), {"datums": float(len(data))}


@pytest.fixture
def service(local_server: Any) -> Iterator[ServiceClient]:
    local_server.faults.clear()
    sc = ServiceClient(base_url=local_server.base_url, api_key="tml-official-signature")
    yield sc
    sc.close()


def _runtime(server: Any) -> Any:
    return server.backend.models.runtime(MICRO)


def _close(x: dict[str, np.ndarray], y: dict[str, np.ndarray], *, rtol: float, atol: float) -> None:
    assert x.keys() == y.keys()
    for key in x:
        np.testing.assert_allclose(x[key], y[key], rtol=rtol, atol=atol, err_msg=key)


def test_official_signature_jax_loss_gives_the_builtin_update(
    local_server: Any, service: ServiceClient
) -> None:
    data = _data(5)
    builtin = service.create_lora_training_client(MICRO, rank=4, seed=21).result()
    custom = service.create_lora_training_client(MICRO, rank=4, seed=21).result()
    ref = builtin.forward_backward(data, "cross_entropy").result()
    out = custom.forward_backward_custom(data, official_ce).result()
    runtime = _runtime(local_server)
    # ∂(Σ −lp·w)/∂lp = −w exactly, so the backward pass sends the built-in call's weights:
    # float32 round-off only (rtol 1e-6).
    _close(
        dict(runtime.accumulated_gradients(builtin.model_id)),
        dict(runtime.accumulated_gradients(custom.model_id)),
        rtol=1e-6,
        atol=1e-9,
    )
    assert out.metrics["loss:sum"] == pytest.approx(ref.metrics["loss:sum"], rel=1e-5)
    assert out.metrics["datums"] == 3.0
    builtin.optim_step(ADAM).result()
    custom.optim_step(ADAM).result()
    after_b = dict(runtime.export_state(builtin.model_id, include_optimizer=False))
    after_c = dict(runtime.export_state(custom.model_id, include_optimizer=False))
    _close(after_b, after_c, rtol=1e-6, atol=1e-8)
    assert any(np.abs(after_b[k]).max() > 0 for k in after_b if k.endswith(".b"))


def test_a_jax_datum_offers_only_loss_inputs() -> None:
    data = [{"weights": np.ones(4, np.float32)}]

    def reads_model_input(data: list[Any], logprobs: list[jax.Array]) -> jax.Array:
        return jnp.sum(logprobs[0]) * data[0].model_input.length

    with pytest.raises(AttributeError, match="only loss_fn_inputs"):
        compute_custom_loss(data, [np.zeros(4, np.float32)], reads_model_input)

    def both_spellings(data: list[Any], logprobs: list[jax.Array]) -> jax.Array:
        d = data[0]
        assert d.loss_fn_inputs is d
        return jnp.sum(logprobs[0] * d["weights"] * d.loss_fn_inputs["weights"])

    out = compute_custom_loss(data, [np.full(4, -2.0, np.float32)], both_spellings)
    assert out.loss_total == pytest.approx(-8.0)
    np.testing.assert_allclose(out.gradients[0], np.ones(4))


# ---------------------------------------------------------------- which framework a loss is in
def _jnp_loss(data: list[Any], logprobs: list[Any]) -> Any:
    return jnp.sum(logprobs[0]), {}


def _plain_loss(data: list[Any], logprobs: list[Any]) -> Any:
    return sum(lp.sum() for lp in logprobs), {}


def _to_torch_loss(data: list[Any], logprobs: list[Any]) -> Any:
    return sum(
        (lp * d.loss_fn_inputs["weights"].to_torch()).sum()
        for d, lp in zip(data, logprobs, strict=True)
    ), {}


class _CallableLoss:
    def __call__(self, data: list[Any], logprobs: list[Any]) -> Any:
        return jax.nn.log_sigmoid(logprobs[0]).sum(), {}


def test_loss_style_rule_without_torch() -> None:
    assert loss_style(_jnp_loss) == "jax"
    assert loss_style(official_ce) == "jax"
    assert loss_style(_plain_loss) == "jax"  # neither framework named: the engine runs it
    assert loss_style(_to_torch_loss) == "torch"  # .to_torch() is the official torch idiom
    assert loss_style(_CallableLoss()) == "jax"
    assert loss_style(functools.partial(_jnp_loss)) == "jax"
    assert loss_style(lambda data, lps: (jnp.sum(lps[0]), {})) == "jax"

    def declared(data: list[Any], logprobs: list[Any]) -> Any:
        return _plain_loss(data, logprobs)

    declared.__tinkjax_loss_style__ = "torch"  # type: ignore[attr-defined]
    assert loss_style(declared) == "torch"
    declared.__tinkjax_loss_style__ = "numpy"  # type: ignore[attr-defined]
    with pytest.raises(EngineInputError, match="__tinkjax_loss_style__"):
        loss_style(declared)


def test_loss_type_input_follows_the_official_sdk(service: ServiceClient) -> None:
    tc = service.create_lora_training_client(MICRO, rank=4, seed=1).result()
    with pytest.raises(ValueError, match="loss_type_input"):
        tc.forward_backward_custom(_data(1, 1), official_ce, loss_type_input="logits")  # type: ignore[arg-type]
    out = tc.forward_backward_custom(_data(1, 1), official_ce, loss_type_input="logprobs")
    assert np.isfinite(out.result().loss_total)
