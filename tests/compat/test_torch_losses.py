"""torch in tinkjax's client: ``TensorData.to_torch``/``from_torch`` and torch losses in the
official signature through ``TrainingClient.forward_backward_custom``, run as the official SDK
runs them (torch autograd on the logprobs, then the linearised backward pass).

Exactness: the torch restatement of cross-entropy gives the built-in loss's accumulated
gradient and adapter after ``optim_step`` to float32 round-off (rtol 1e-6); a non-linear loss
(−log σ of a scaled sum, DPO-shaped) gives the same accumulated gradient in torch as in JAX
through the engine (rtol 1e-5: two float32 implementations of log-sigmoid).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tinkjax.client import ServiceClient
from tinkjax.client._torch_loss import loss_style
from tinkjax.errors import EngineInputError, NonFiniteError
from tinkjax.types import AdamParams, Datum, ModelInput, TensorData

torch = pytest.importorskip("torch")
F = torch.nn.functional

MICRO = "tinkjax/bytelm-micro"
ADAM = AdamParams(learning_rate=1e-2)


def _data(seed: int, n: int = 3) -> list[Datum]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        length = 7 + 4 * i
        toks = rng.integers(0, 256, length + 1)
        inputs = {
            "target_tokens": TensorData.from_numpy(toks[1:].astype(np.int64)),
            "weights": TensorData.from_numpy(rng.uniform(0.5, 1.5, length).astype(np.float32)),
        }
        out.append(
            Datum(model_input=ModelInput.from_ints(toks[:-1].tolist()), loss_fn_inputs=inputs)
        )
    return out


def torch_ce(data: list[Any], logprobs: list[Any]) -> tuple[Any, dict[str, float]]:
    """The official SDK docstring's style: ``.to_torch()`` on the datum's inputs."""
    loss = sum(
        -(datum.loss_fn_inputs["weights"].to_torch() * lp).sum()
        for datum, lp in zip(data, logprobs, strict=True)
    )
    return loss, {"n": float(len(data))}


def torch_logsigmoid(data: list[Any], logprobs: list[Any]) -> tuple[Any, dict[str, float]]:
    sums = torch.stack(
        [
            (lp * torch.tensor(d.loss_fn_inputs["weights"].data)).sum()
            for d, lp in zip(data, logprobs, strict=True)
        ]
    )
    loss = -F.logsigmoid(0.1 * (sums[0] - sums[1:].mean()))
    return loss, {"margin": (sums[0] - sums[1:].mean()).item()}


def jax_logsigmoid(data: list[Any], logprobs: list[Any]) -> tuple[Any, dict[str, Any]]:
    sums = jnp.stack(
        [(lp * d.loss_fn_inputs["weights"]).sum() for d, lp in zip(data, logprobs, strict=True)]
    )
    return -jax.nn.log_sigmoid(0.1 * (sums[0] - sums[1:].mean())), {}


@pytest.fixture
def service(local_server: Any) -> Iterator[ServiceClient]:
    sc = ServiceClient(base_url=local_server.base_url, api_key="tml-torch-losses")
    yield sc
    sc.close()


def _runtime(server: Any) -> Any:
    return server.backend.models.runtime(MICRO)


def _close(x: dict[str, np.ndarray], y: dict[str, np.ndarray], *, rtol: float, atol: float) -> None:
    assert x.keys() == y.keys()
    for key in x:
        np.testing.assert_allclose(x[key], y[key], rtol=rtol, atol=atol, err_msg=key)


def test_tensor_data_round_trips_through_torch() -> None:
    t = TensorData.from_torch(torch.arange(6, dtype=torch.float64).reshape(2, 3).requires_grad_())
    assert (t.dtype, t.shape) == ("float32", [2, 3])
    back = t.to_torch()
    assert back.dtype == torch.float32
    assert back.shape == (2, 3)
    np.testing.assert_array_equal(back.numpy(), np.arange(6).reshape(2, 3))
    back[0, 0] = 99.0  # a writable copy, not a view of the read-only wire array
    assert t.to_numpy()[0, 0] == 0
    assert TensorData.from_torch(torch.tensor([1, 2], dtype=torch.int32)).dtype == "int64"
    assert TensorData.from_torch(torch.ones(2, dtype=torch.bfloat16)).dtype == "float32"
    sparse = TensorData.from_numpy_sparse(np.array([[0, 3, 0, 0], [0, 0, 0, 5]], np.int64))
    assert sparse.is_sparse
    assert sparse.to_torch(pad_value=0).tolist() == [[0, 3, 0, 0], [0, 0, 0, 5]]


def test_loss_style_sees_torch() -> None:
    assert loss_style(torch_ce) == "torch"
    assert loss_style(torch_logsigmoid) == "torch"  # module globals torch and F
    assert loss_style(jax_logsigmoid) == "jax"

    def mixed(data: list[Any], logprobs: list[Any]) -> Any:
        return torch.stack(logprobs).sum() + jnp.zeros(()), {}

    with pytest.raises(EngineInputError, match="both torch and JAX"):
        loss_style(mixed)


def test_torch_loss_gives_the_builtin_update(local_server: Any, service: ServiceClient) -> None:
    data = _data(3)
    builtin = service.create_lora_training_client(MICRO, rank=4, seed=31).result()
    custom = service.create_lora_training_client(MICRO, rank=4, seed=31).result()
    ref = builtin.forward_backward(data, "cross_entropy").result()
    out = custom.forward_backward_custom(data, torch_ce).result()
    runtime = _runtime(local_server)
    _close(
        dict(runtime.accumulated_gradients(builtin.model_id)),
        dict(runtime.accumulated_gradients(custom.model_id)),
        rtol=1e-6,
        atol=1e-9,
    )
    assert out.metrics["loss:sum"] == pytest.approx(ref.metrics["loss:sum"], rel=1e-5)
    assert out.metrics["n"] == 3.0
    builtin.optim_step(ADAM).result()
    custom.optim_step(ADAM).result()
    _close(
        dict(runtime.export_state(builtin.model_id, include_optimizer=False)),
        dict(runtime.export_state(custom.model_id, include_optimizer=False)),
        rtol=1e-6,
        atol=1e-8,
    )


def test_nonlinear_torch_loss_matches_the_same_loss_in_jax(
    local_server: Any, service: ServiceClient
) -> None:
    data = _data(4)
    in_torch = service.create_lora_training_client(MICRO, rank=4, seed=32).result()
    in_jax = service.create_lora_training_client(MICRO, rank=4, seed=32).result()
    a = in_torch.forward_backward_custom(data, torch_logsigmoid).result()
    b = in_jax.forward_backward_custom(data, jax_logsigmoid).result()
    assert a.loss_total == pytest.approx(b.loss_total, rel=1e-5)
    runtime = _runtime(local_server)
    acc_t = dict(runtime.accumulated_gradients(in_torch.model_id))
    _close(acc_t, dict(runtime.accumulated_gradients(in_jax.model_id)), rtol=1e-5, atol=1e-9)
    assert any(np.abs(v).max() > 0 for v in acc_t.values())


def test_bad_torch_losses_are_refused_and_nothing_is_accumulated(
    local_server: Any, service: ServiceClient
) -> None:
    tc = service.create_lora_training_client(MICRO, rank=4, seed=33).result()
    with pytest.raises(EngineInputError, match="engine options"):
        tc.forward_backward_custom(_data(1, 1), torch_ce, track_grad_norms=True)

    def detached(data: list[Any], logprobs: list[Any]) -> Any:
        return torch.tensor(1.0), {}

    with pytest.raises(EngineInputError, match="requires_grad"):
        tc.forward_backward_custom(_data(1, 1), detached).result()

    def nan_loss(data: list[Any], logprobs: list[Any]) -> Any:
        return torch.sum(logprobs[0]) * float("nan"), {}

    with pytest.raises(NonFiniteError, match="torch loss is not finite"):
        tc.forward_backward_custom(_data(1, 1), nan_loss).result()
    acc = dict(_runtime(local_server).accumulated_gradients(tc.model_id))
    assert all(not np.any(v) for v in acc.values())
    out = tc.forward_backward_custom(_data(1, 1), torch_ce).result()  # still usable
    assert np.isfinite(out.loss_total)
