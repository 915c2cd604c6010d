"""``forward_backward_custom`` end to end against the local backend (micro model).

Exactness: the engine's cross-entropy (built-in name and a Tinker-style JAX callable) and
importance sampling, sent through the linearisation trick, give the same accumulated gradient
and the same adapter weights after ``optim_step`` as the server's built-in losses. Error paths:
nothing is accumulated on the server and the client stays usable.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import msgspec
import numpy as np
import pytest

import tinkjax.regularizers as R
from tinkjax import events
from tinkjax.client import ServiceClient
from tinkjax.client._custom import DatumChunks, EncodedChunks, plan_passes
from tinkjax.engine import Regularizer, compute_custom_loss
from tinkjax.engine._batch import LossBatch
from tinkjax.errors import EngineInputError, NonFiniteError, RegularizerError
from tinkjax.types import AdamParams, Datum, ModelInput, TensorData

MICRO = "tinkjax/bytelm-micro"
ADAM = AdamParams(learning_rate=1e-2)


def _data(seed: int, n: int = 3, *, rl: bool = False) -> list[Datum]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        length = 9 + 4 * i
        toks = rng.integers(0, 256, length + 1)
        inputs: dict[str, Any] = {
            "target_tokens": TensorData.from_numpy(toks[1:].astype(np.int64)),
            "weights": TensorData.from_numpy(rng.uniform(0.5, 1.5, length).astype(np.float32)),
        }
        if rl:
            inputs = {
                "target_tokens": inputs["target_tokens"],
                "logprobs": TensorData.from_numpy(-rng.uniform(4, 7, length).astype(np.float32)),
                "advantages": TensorData.from_numpy(rng.normal(size=length).astype(np.float32)),
            }
        out.append(
            Datum(model_input=ModelInput.from_ints(toks[:-1].tolist()), loss_fn_inputs=inputs)
        )
    return out


@pytest.fixture
def service(local_server: Any) -> Iterator[ServiceClient]:
    local_server.faults.clear()
    sc = ServiceClient(base_url=local_server.base_url, api_key="tml-custom-loss-tests")
    yield sc
    sc.close()


def _runtime(server: Any) -> Any:
    return server.backend.models.runtime(MICRO)


def _state(server: Any, model_id: str) -> dict[str, np.ndarray]:
    return dict(_runtime(server).export_state(model_id, include_optimizer=False))


def _acc(server: Any, model_id: str) -> dict[str, np.ndarray]:
    return dict(_runtime(server).accumulated_gradients(model_id))


def _pair(service: ServiceClient, seed: int) -> tuple[Any, Any]:
    a = service.create_lora_training_client(MICRO, rank=4, seed=seed).result()
    b = service.create_lora_training_client(MICRO, rank=4, seed=seed).result()
    return a, b


def _close(x: dict[str, np.ndarray], y: dict[str, np.ndarray], *, rtol: float, atol: float) -> None:
    assert x.keys() == y.keys()
    for key in x:
        np.testing.assert_allclose(x[key], y[key], rtol=rtol, atol=atol, err_msg=key)


def tinker_style_ce(data: list[dict[str, jax.Array]], logprobs: list[jax.Array]) -> Any:
    """A Tinker-style loss in JAX: Σ −lp·w over every datum."""
    loss = sum(jnp.sum(-lp * d["weights"]) for d, lp in zip(data, logprobs, strict=True))
    return loss, {"tokens:sum": float(sum(lp.size for lp in logprobs))}


@pytest.mark.parametrize("loss", ["cross_entropy", tinker_style_ce], ids=["builtin", "callable"])
def test_custom_cross_entropy_equals_builtin(
    local_server: Any, service: ServiceClient, loss: Any
) -> None:
    data = _data(1)
    builtin, custom = _pair(service, seed=11)
    assert _state(local_server, builtin.model_id).keys()
    _close(
        _state(local_server, builtin.model_id),
        _state(local_server, custom.model_id),
        rtol=0,
        atol=0,
    )

    ref = builtin.forward_backward(data, "cross_entropy").result()
    out = custom.forward_backward_custom(data, loss).result()
    # The engine's gradient of Σ −lp·w is −w exactly, so the backward pass sends the same
    # weights as the built-in call: identical accumulated gradients.
    _close(
        _acc(local_server, builtin.model_id),
        _acc(local_server, custom.model_id),
        rtol=1e-6,
        atol=1e-9,
    )
    assert out.metrics["loss:sum"] == pytest.approx(ref.metrics["loss:sum"], rel=1e-5)
    # surrogate = Σ −lp·(−g) with g = −w: the same number as the built-in loss here
    assert out.metrics["surrogate_loss:sum"] == pytest.approx(ref.metrics["loss:sum"], rel=1e-5)
    assert len(out.loss_fn_outputs) == len(data)

    builtin.optim_step(ADAM).result()
    custom.optim_step(ADAM).result()
    after_b, after_c = _state(local_server, builtin.model_id), _state(local_server, custom.model_id)
    _close(after_b, after_c, rtol=1e-6, atol=1e-8)
    assert any(np.abs(after_b[k]).max() > 0 for k in after_b if k.endswith(".b"))  # it trained


def test_custom_importance_sampling_equals_builtin(
    local_server: Any, service: ServiceClient
) -> None:
    data = _data(2, rl=True)
    builtin, custom = _pair(service, seed=12)
    ref = builtin.forward_backward(data, "importance_sampling").result()
    out = custom.forward_backward_custom(data, "importance_sampling").result()
    # Here the weights are ratio·A, rounded to float32 on the wire: tolerance 1e-5 relative.
    _close(
        _acc(local_server, builtin.model_id),
        _acc(local_server, custom.model_id),
        rtol=1e-5,
        atol=1e-7,
    )
    assert out.metrics["loss:sum"] == pytest.approx(ref.metrics["loss:sum"], rel=1e-5)
    builtin.optim_step(ADAM).result()
    custom.optim_step(ADAM).result()
    # First Adam step ≈ lr·sign(g): weights agree to well under one step (lr = 1e-2).
    _close(
        _state(local_server, builtin.model_id),
        _state(local_server, custom.model_id),
        rtol=1e-5,
        atol=1e-6,
    )


def test_breakdown_matches_the_engine_and_events_are_emitted(
    local_server: Any, service: ServiceClient
) -> None:
    data = _data(3)
    tc = service.create_lora_training_client(MICRO, rank=4, seed=3).result()
    regs = [
        R.entropy(weight=-0.1),
        R.l2(weight=0.3, target="probs", center=1.0),
        R.sequence_variance(weight=2.0),
    ]
    seen: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
    events.attach(
        "test-custom",
        ["tinkjax.custom_loss.start", "tinkjax.custom_loss.stop", "tinkjax.regularizer.compute"],
        lambda name, m, md: seen.append((".".join(name), dict(m), dict(md))),
    )
    try:
        out = tc.forward_backward_custom(
            data, "cross_entropy", regularizers=regs, track_grad_norms=True
        ).result()
    finally:
        events.detach("test-custom")
    forward = tc.forward(data, "cross_entropy").result()  # nothing trained yet: same logprobs
    lps = [o["logprobs"].to_numpy() for o in forward.loss_fn_outputs]
    inputs = [{k: v.to_numpy() for k, v in d.loss_fn_inputs.items()} for d in data]
    ref = compute_custom_loss(
        inputs, lps, "cross_entropy", regularizers=regs, track_grad_norms=True
    )
    assert out.loss_total == pytest.approx(ref.loss_total, rel=1e-5)
    assert out.base_loss == pytest.approx(ref.base_loss, rel=1e-5)
    assert out.total_grad_norm == pytest.approx(ref.total_grad_norm, rel=1e-5)
    assert out.metrics["loss:sum"] == pytest.approx(out.loss_total)
    for reg in regs:
        got, want = out.regularizers[reg.name], ref.regularizers[reg.name]
        assert got.weight == reg.weight
        assert got.value == pytest.approx(want.value, rel=1e-4, abs=1e-7)
        assert got.contribution == pytest.approx(reg.weight * got.value, rel=1e-6)
        assert got.grad_norm == pytest.approx(want.grad_norm, rel=1e-4, abs=1e-7)
    assert out.regularizer_total == pytest.approx(
        sum(r.contribution for r in out.regularizers.values()), rel=1e-5
    )
    names = [s[0] for s in seen]
    assert names[0] == "tinkjax.custom_loss.start"
    assert names[-1] == "tinkjax.custom_loss.stop"
    computed = {
        md["regularizer_name"]: m for n, m, md in seen if n == "tinkjax.regularizer.compute"
    }
    assert set(computed) == {r.name for r in regs}
    assert computed["entropy"]["grad_norm"] == pytest.approx(out.regularizers["entropy"].grad_norm)
    assert all(md["model_id"] == tc.model_id for _, _, md in seen)


def test_optim_step_issued_right_after_is_ordered_after_both_passes(
    local_server: Any, service: ServiceClient
) -> None:
    data = _data(4)
    waited, eager = _pair(service, seed=14)
    waited.forward_backward_custom(data, "cross_entropy").result()
    waited.optim_step(ADAM).result()
    # Not awaiting the custom call: the optim step's seq id comes after both reserved passes.
    fut = eager.forward_backward_custom(data, "cross_entropy")
    step = eager.optim_step(ADAM)
    step.result()
    fut.result()
    _close(
        _state(local_server, waited.model_id),
        _state(local_server, eager.model_id),
        rtol=1e-6,
        atol=1e-8,
    )


def nan_value(batch: LossBatch, lp: jax.Array) -> jax.Array:
    return jnp.sum(jnp.where(batch.mask > 0, jnp.log(lp), 0.0))  # log of a negative: NaN


async def _failing_prepare(data: Sequence[Any]) -> dict[str, list[float]]:
    raise ConnectionError("reward model unreachable")


async def _slow_prepare(data: Sequence[Any]) -> dict[str, list[float]]:
    await asyncio.sleep(10)
    return {"reward": [0.0] * len(data)}


def reward_term(batch: LossBatch, lp: jax.Array, *, reward: jax.Array) -> jax.Array:
    return jnp.sum(reward * batch.seq_valid)


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda d: ([Regularizer("bad_log", nan_value, weight=1.0)], d), NonFiniteError, "bad_log"),
        (
            lambda d: ([Regularizer("rm", reward_term, prepare=_failing_prepare)], d),
            RegularizerError,
            "'rm'.*unreachable",
        ),
        (
            lambda d: (
                [Regularizer("slow", reward_term, prepare=_slow_prepare, prepare_timeout=0.2)],
                d,
            ),
            RegularizerError,
            "'slow'.*timed out",
        ),
        (lambda d: ([], [_with_bad_advantages(d[0]), *d[1:]]), EngineInputError, "advantages"),
    ],
    ids=["nan", "failing-async", "timeout-async", "shape-mismatch"],
)
def test_failures_send_no_backward_and_leave_the_client_usable(
    local_server: Any, service: ServiceClient, make: Any, error: type[Exception], match: str
) -> None:
    tc = service.create_lora_training_client(MICRO, rank=4, seed=5).result()
    regs, data = make(_data(5, rl=True))
    loss = "importance_sampling"
    with pytest.raises(error, match=match) as info:
        tc.forward_backward_custom(data, loss, regularizers=regs).result(timeout=60)
    if isinstance(info.value, NonFiniteError):
        assert info.value.term == "bad_log"
    acc = _acc(local_server, tc.model_id)
    assert all(not np.any(v) for v in acc.values()), "a backward pass reached the server"
    # The reserved backward ids were released: later calls are not stuck behind a gap.
    good = _data(6)
    tc.forward_backward(good, "cross_entropy").result(timeout=60)
    assert any(np.any(v) for v in _acc(local_server, tc.model_id).values())
    tc.optim_step(ADAM).result(timeout=60)


def _with_bad_advantages(d: Datum) -> Datum:
    n = d.loss_fn_inputs["target_tokens"].to_numpy().shape[0]
    inputs = dict(d.loss_fn_inputs)
    inputs["advantages"] = TensorData.from_numpy(np.ones(n + 3, np.float32))
    return Datum(model_input=d.model_input, loss_fn_inputs=inputs)


def test_async_twin_and_two_dimensional_targets(local_server: Any, service: ServiceClient) -> None:
    rng = np.random.default_rng(7)
    toks = rng.integers(0, 256, 12)
    targets = rng.integers(0, 256, (11, 3)).astype(np.int64)
    weights = rng.uniform(0.1, 1.0, (11, 3)).astype(np.float32)
    datum = Datum(
        model_input=ModelInput.from_ints(toks[:-1].tolist()),
        loss_fn_inputs={
            "target_tokens": TensorData.from_numpy(targets),
            "weights": TensorData.from_numpy(weights),
        },
    )
    builtin, custom = _pair(service, seed=17)

    async def run() -> Any:
        fut = await custom.forward_backward_custom_async(
            [datum], "cross_entropy", track_grad_norms=True
        )
        return await fut

    out = asyncio.run(run())
    ref = builtin.forward_backward([datum], "cross_entropy").result()
    assert out.loss_fn_outputs[0]["logprobs"].to_numpy().shape == (11, 3)
    assert out.metrics["loss:sum"] == pytest.approx(ref.metrics["loss:sum"], rel=1e-5)
    _close(
        _acc(local_server, builtin.model_id),
        _acc(local_server, custom.model_id),
        rtol=1e-5,
        atol=1e-8,
    )
    assert out.base_grad_norm == pytest.approx(float(np.linalg.norm(weights)), rel=1e-5)


@pytest.mark.parametrize(
    ("limit", "ids"),
    [
        ({"fwdbwd_max_chunk_len": 2}, 6),  # 3 chunks of ≤ 2 datums per pass
        # every datum of this batch is 200-460 bytes on the wire: one chunk each
        ({"fwdbwd_max_chunk_bytes_count": 199}, 10),
    ],
    ids=["by-count", "by-bytes"],
)
@pytest.mark.parametrize("wire_mode", ["protobuf", "json"])
def test_multi_chunk_passes_equal_builtin_on_both_routes(
    local_server: Any, wire_mode: str, limit: dict[str, int], ids: int
) -> None:
    """Datums pre-encoded once for both passes (protobuf) and per-pass ``Datum`` objects
    (JSON wire mode) give the built-in gradient, also when each pass spans several chunks
    (split by datum count or by bytes)."""
    data = _data(3, n=5)
    with ServiceClient(
        base_url=local_server.base_url, api_key="tml-custom-loss-tests", wire_mode=wire_mode
    ) as sc:
        assert sc.session_id  # the server's config is in
        sc.session.server_config = msgspec.structs.replace(sc.server_config, **limit)
        builtin, custom = _pair(sc, seed=21)
        route = EncodedChunks if wire_mode == "protobuf" else DatumChunks
        assert type(plan_passes(custom._queue, data)) is route
        builtin.forward_backward(data, "cross_entropy").result()
        first = custom._queue.next_seq_id
        out = custom.forward_backward_custom(data, "cross_entropy").result()
        assert custom._queue.next_seq_id - first == ids
        assert len(out.loss_fn_outputs) == len(data)
        for datum, output in zip(data, out.loss_fn_outputs, strict=True):
            assert output["logprobs"].to_numpy().shape == datum.model_input.to_numpy().shape
        # Same weights as the built-in call; the chunks' float32 gradients may be summed in
        # another order: agreement to float32 rounding of the sum.
        _close(
            _acc(local_server, builtin.model_id),
            _acc(local_server, custom.model_id),
            rtol=1e-5,
            atol=2e-6,
        )


def test_async_regularizer_io_overlaps_the_forward_pass(
    local_server: Any, service: ServiceClient
) -> None:
    """A regularizer's ``prepare`` starts once the forward request is out, not after its
    result came back: the I/O overlaps the server's forward pass."""
    log: list[tuple[str, str, int | None]] = []
    seen_at_prepare: list[list[tuple[str, str, int | None]]] = []

    def record(name: Any, measurements: dict[str, Any], metadata: dict[str, Any]) -> None:
        log.append((str(name[-1]), metadata["path"], metadata.get("status")))

    async def prepare(data: Sequence[Any]) -> dict[str, list[float]]:
        seen_at_prepare.append(list(log))
        await asyncio.sleep(0.05)  # a reward model's latency
        return {"reward": [float(i) for i in range(len(data))]}

    tc = service.create_lora_training_client(MICRO, rank=4, seed=23).result()
    events.attach(
        "overlap", [("tinkjax", "request", "start"), ("tinkjax", "request", "stop")], record
    )
    try:
        out = tc.forward_backward_custom(
            _data(8),
            "cross_entropy",
            regularizers=[Regularizer("rm", reward_term, prepare=prepare)],
        ).result(timeout=60)
    finally:
        events.detach("overlap")
    (seen,) = seen_at_prepare
    assert ("start", "/api/v1/forward_backward", None) in seen  # the forward pass was sent
    assert not [e for e in seen if e[1] == "/api/v1/retrieve_future" and e[0] == "stop"]
    # and the reward entered the loss: Σ reward·seq_valid over the 3 datums
    assert out.regularizers["rm"].value == pytest.approx(0.0 + 1.0 + 2.0)
