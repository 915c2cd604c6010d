"""Official-SDK losses made with ``create_custom_loss`` run on the server in one pass and give
the adapter the same gradient as the same loss run client-side.

Needs torch (the SDK traces the loss with torch.fx): CI runs it in its compat step, which
installs torch; the default run skips it. The graph evaluator itself is covered without torch
by ``test_custom_graphs.py`` and ``tests/losses/test_graph.py``.

"The same adapter update" is checked on the accumulated gradient (what ``optim_step`` turns
into the update), of twin models (same seed) fed the same data: float32 throughout, so within
``rtol=2e-4, atol=2e-6``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

from tinkjax.server import ServerHandle

from .conftest import MICRO

torch = pytest.importorskip("torch")
tinker = pytest.importorskip("tinker")
types = tinker.types
F = torch.nn.functional

TEXT = b"a stitch in time saves nine; the early bird catches the worm. "
RTOL, ATOL = 2e-4, 2e-6


@pytest.fixture(scope="module")
def service(sdk_env: None) -> Iterator[Any]:
    with tinker.ServiceClient() as client:
        yield client


class _Calls:
    """Counts the runtime's forward_backward calls by kind."""

    def __init__(self, runtime: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        self.forward = self.backward = 0
        original = runtime.forward_backward

        def spy(items: Any, *, forward_only: bool) -> Any:
            if forward_only:
                self.forward += 1
            else:
                self.backward += 1
            return original(items, forward_only=forward_only)

        monkeypatch.setattr(runtime, "forward_backward", spy)


def _data(rng: np.random.Generator, **extra: Callable[[int], Any]) -> list[Any]:
    out = []
    for start, n in [(0, 21), (9, 14), (30, 26)]:
        tokens = list(TEXT[start : start + n + 1])
        inputs: dict[str, Any] = {"target_tokens": tokens[1:]}
        for key, make in extra.items():
            value = np.asarray(make(n), np.float32)
            inputs[key] = types.TensorData(
                data=value.reshape(-1).tolist(), dtype="float32", shape=list(value.shape)
            )
        out.append(
            types.Datum(model_input=types.ModelInput.from_ints(tokens[:-1]), loss_fn_inputs=inputs)
        )
    return out


def _grads(server: ServerHandle, model_id: str) -> dict[str, np.ndarray]:
    return server.backend.models.runtime(MICRO).accumulated_gradients(model_id)


def _assert_same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    assert any(np.abs(v).max() > 0 for v in a.values())
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=RTOL, atol=ATOL, err_msg=key)


def _twins(service: Any, seed: int) -> tuple[Any, Any]:
    return (
        service.create_lora_training_client(base_model=MICRO, rank=4, seed=seed).result(),
        service.create_lora_training_client(base_model=MICRO, rank=4, seed=seed).result(),
    )


def weighted_nll(logprobs: Any, weights: Any) -> Any:
    loss = -(logprobs * weights).sum()
    return loss, {"custom/weighted_nll:sum": loss, "custom/tokens:mean": (weights > 0).sum()}


def is_like(logprobs: Any, logprobs_q: Any, advantages: Any) -> Any:
    ratio = torch.exp(logprobs - logprobs_q)
    loss = -(ratio * advantages).sum()
    return loss, {"custom/ratio:mean": ratio.mean()}


def dpo_like(logprobs: Any, weights: Any, reference: Any) -> Any:
    # A per-datum DPO-style term: -log sigmoid(beta * (weighted logprob - reference logprob)).
    margin = (logprobs * weights).sum() - reference
    reg = torch.clamp(logprobs, min=-20.0).square().sum() / logprobs.shape[0]
    loss = -F.logsigmoid(0.5 * margin) + 0.01 * reg
    return loss, {"custom/margin:mean": margin.detach()}


def test_weighted_nll_matches_builtin_cross_entropy_in_one_pass(
    service: Any, server: ServerHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(0)
    handle = service.create_custom_loss(weighted_nll, {"logprobs": 1, "weights": 1}).result()
    assert handle.loss_id is not None  # the server said custom_loss_server_side: uploaded
    data = _data(rng, weights=lambda n: rng.uniform(0.0, 1.0, n))
    custom, builtin = _twins(service, seed=11)
    calls = _Calls(server.backend.models.runtime(MICRO), monkeypatch)
    out = custom.forward_backward_custom(data, handle).result()
    assert (calls.forward, calls.backward) == (0, 1)  # one fused pass, no forward-only call
    ref = builtin.forward_backward(data, "cross_entropy").result()
    _assert_same(_grads(server, custom.model_id), _grads(server, builtin.model_id))
    assert out.metrics["loss:sum"] == pytest.approx(ref.metrics["loss:sum"], rel=1e-5)
    assert out.metrics["custom/weighted_nll:sum"] == pytest.approx(
        out.metrics["loss:sum"], rel=1e-5
    )
    assert out.metrics["custom/tokens:mean"] == pytest.approx(np.mean([21, 14, 26]))
    for o, r in zip(out.loss_fn_outputs, ref.loss_fn_outputs, strict=True):
        np.testing.assert_allclose(o["logprobs"].to_numpy(), r["logprobs"].to_numpy(), rtol=1e-5)


def test_importance_sampling_like_matches_builtin(service: Any, server: ServerHandle) -> None:
    rng = np.random.default_rng(1)
    handle = service.create_custom_loss(
        is_like, {"logprobs": 1, "logprobs_q": 1, "advantages": 1}
    ).result()
    data = _data(
        rng,
        logprobs_q=lambda n: rng.uniform(-6.0, -4.0, n),
        advantages=lambda n: rng.normal(size=n),
    )
    builtin_data = [
        types.Datum(
            model_input=d.model_input,
            loss_fn_inputs={
                "target_tokens": d.loss_fn_inputs["target_tokens"],
                "logprobs": d.loss_fn_inputs["logprobs_q"],
                "advantages": d.loss_fn_inputs["advantages"],
            },
        )
        for d in data
    ]
    custom, builtin = _twins(service, seed=12)
    out = custom.forward_backward_custom(data, handle).result()
    ref = builtin.forward_backward(builtin_data, "importance_sampling").result()
    _assert_same(_grads(server, custom.model_id), _grads(server, builtin.model_id))
    assert out.metrics["loss:sum"] == pytest.approx(ref.metrics["loss:sum"], rel=1e-4)


def test_dpo_like_matches_the_sdks_client_side_run(
    service: Any, server: ServerHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(2)
    ranks = {"logprobs": 1, "weights": 1, "reference": 0}
    handle = service.create_custom_loss(dpo_like, ranks).result()
    data = _data(
        rng, weights=lambda n: rng.uniform(size=n) > 0.3, reference=lambda n: rng.uniform(-40, -20)
    )

    def client_side(batch: list[Any], logprobs_list: list[Any]) -> Any:
        total = 0
        for datum, lp in zip(batch, logprobs_list, strict=True):
            inputs = datum.loss_fn_inputs
            loss, _ = dpo_like(lp, inputs["weights"].to_torch(), inputs["reference"].to_torch())
            total = total + loss
        return total, {}

    custom, reference = _twins(service, seed=13)
    calls = _Calls(server.backend.models.runtime(MICRO), monkeypatch)
    out = custom.forward_backward_custom(data, handle).result()
    assert (calls.forward, calls.backward) == (0, 1)
    ref = reference.forward_backward_custom(data, client_side).result()
    assert (calls.forward, calls.backward) == (1, 2)  # the client-side run: two passes
    _assert_same(_grads(server, custom.model_id), _grads(server, reference.model_id))
    assert out.metrics["loss:sum"] == pytest.approx(ref.metrics["loss:sum"], rel=1e-4)
    assert "custom/margin:mean" in out.metrics

    # The same loss then trains: an optimizer step moves both twins alike.
    adam = types.AdamParams(learning_rate=1e-2)
    custom.optim_step(adam).result()
    reference.optim_step(adam).result()
    again = custom.forward_backward_custom(data, handle).result()
    assert again.metrics["loss:sum"] < out.metrics["loss:sum"]


def test_tinkjax_client_handle_gives_the_same_update(server: ServerHandle, sdk_env: None) -> None:
    import tinkjax

    rng = np.random.default_rng(3)
    data = _data(rng, weights=lambda n: rng.uniform(0.0, 1.0, n))
    with tinkjax.ServiceClient(base_url=server.base_url, api_key="tml-test") as client:
        handle = client.create_custom_loss(weighted_nll, {"logprobs": 1, "weights": 1}).result()
        assert isinstance(handle, tinkjax.LossHandle)
        tc = client.create_lora_training_client(MICRO, rank=4, seed=14).result()
        ref = client.create_lora_training_client(MICRO, rank=4, seed=14).result()
        batch = [_tinkjax_datum(tinkjax, d) for d in data]
        out = tc.forward_backward_custom(batch, handle).result()
        ref.forward_backward(batch, "cross_entropy").result()
        _assert_same(_grads(server, tc.model_id), _grads(server, ref.model_id))
        assert out.metrics["custom/weighted_nll:sum"] == pytest.approx(out.metrics["loss:sum"])
        with pytest.raises(ValueError, match="weights"):
            tc.forward_backward_custom([_tinkjax_datum(tinkjax, data[0], drop="weights")], handle)


def _tinkjax_datum(tinkjax: Any, datum: Any, drop: str | None = None) -> Any:
    inputs = {k: np.asarray(v.to_numpy()) for k, v in datum.loss_fn_inputs.items() if k != drop}
    return tinkjax.types.Datum(
        model_input=tinkjax.types.ModelInput.from_ints(datum.model_input.to_ints()),
        loss_fn_inputs=inputs,
    )
