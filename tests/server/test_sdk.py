"""The official ``tinker`` SDK 0.38.0 runs unchanged against the local server (real loopback)."""

from __future__ import annotations

import numpy as np
import pytest

from tinkjax.server import ServerHandle

from .conftest import MICRO

tinker = pytest.importorskip("tinker")
types = tinker.types

TEXT = b"the quick brown fox jumps over the lazy dog. " * 2


def _datum(tokens: list[int], weight: float = 1.0) -> object:
    return types.Datum(
        model_input=types.ModelInput.from_ints(tokens[:-1]),
        loss_fn_inputs={
            "target_tokens": tokens[1:],
            "weights": [weight] * (len(tokens) - 1),
        },
    )


@pytest.fixture(scope="module")
def service(sdk_env: None) -> object:
    with tinker.ServiceClient() as client:
        yield client


def test_sdk_full_loop(service: object, server: ServerHandle) -> None:
    tc = service.create_lora_training_client(base_model=MICRO, rank=8, seed=3).result()
    assert tc.get_info().model_data.model_name == MICRO
    tokens = list(TEXT[:40])
    fb = tc.forward_backward([_datum(tokens), _datum(tokens[:20], 0.5)], "cross_entropy")
    opt = tc.optim_step(types.AdamParams(learning_rate=1e-2))
    out = fb.result()
    assert opt.result().metrics["grad_norm:mean"] > 0
    assert [list(o["logprobs"].shape) for o in out.loss_fn_outputs] == [[39], [19]]
    lp0 = out.loss_fn_outputs[0]["logprobs"].to_numpy()
    lp1 = out.loss_fn_outputs[1]["logprobs"].to_numpy()
    # loss:sum is the weighted sum of -logprobs over both datums (no mean, no normalisation).
    expected = -(lp0.sum() + 0.5 * lp1.sum())
    assert out.metrics["loss:sum"] == pytest.approx(float(expected), rel=1e-4)

    saved = tc.save_state("state-1").result()
    assert saved.path == f"tinker://{tc.model_id}/weights/state-1"
    sampler = tc.save_weights_and_get_sampling_client().result()
    params = types.SamplingParams(max_tokens=6, temperature=0.0)
    res = sampler.sample(types.ModelInput.from_ints(tokens[:8]), 2, params).result()
    assert len(res.sequences) == 2
    for seq in res.sequences:
        assert len(seq.tokens) == 6
        assert len(seq.logprobs) == 6
        assert seq.stop_reason == "length"
    assert res.sequences[0].tokens == res.sequences[1].tokens  # greedy

    named = tc.save_weights_for_sampler("sampler-1").result()
    assert named.path.endswith("/sampler_weights/sampler-1")
    rest = tinker.RestClient()
    listed = rest.list_checkpoints(tc.model_id).result()
    ids = [c.checkpoint_id for c in listed.checkpoints]
    assert ids == ["weights/state-1", "sampler_weights/sampler-1"]
    assert [c.checkpoint_type for c in listed.checkpoints] == ["training", "sampler"]

    # Resume from the saved state: same weights, so the same logprobs as right after saving.
    tc2 = service.create_training_client_from_state_with_optimizer(saved.path).result()
    assert tc2.model_id != tc.model_id
    again = tc2.forward([_datum(tokens)], "cross_entropy").result()
    before = tc.forward([_datum(tokens)], "cross_entropy").result()
    np.testing.assert_allclose(
        again.loss_fn_outputs[0]["logprobs"].to_numpy(),
        before.loss_fn_outputs[0]["logprobs"].to_numpy(),
        rtol=1e-5, atol=1e-5,
    )  # fmt: skip

    # Sampling from the saved sampler weights gives the snapshot's greedy tokens.
    from_path = service.create_sampling_client(model_path=named.path).result()
    res2 = from_path.sample(types.ModelInput.from_ints(tokens[:8]), 1, params).result()
    assert res2.sequences[0].tokens == res.sequences[0].tokens
    np.testing.assert_allclose(res2.sequences[0].logprobs, res.sequences[0].logprobs, atol=1e-4)


def test_sdk_large_forward_backward_in_order(service: object, server: ServerHandle) -> None:
    tc = service.create_lora_training_client(base_model=MICRO, rank=4).result()
    n = 1100  # > fwdbwd_max_chunk_len (1024): two chunks posted concurrently, chunk 1 last
    data = []
    for i in range(n):
        length = 3 + i % 5
        tokens = [(i * 7 + j) % 256 for j in range(length)]
        data.append(_datum(tokens, weight=float(i + 1)))
    out = tc.forward_backward(data, "cross_entropy").result()
    assert len(out.loss_fn_outputs) == n
    for i, o in enumerate(out.loss_fn_outputs):
        lp = o["logprobs"].to_numpy()
        el = o["elementwise_loss"].to_numpy()
        assert lp.shape == (2 + i % 5,), i
        # elementwise_loss = -weight * logprob with this datum's own weight i + 1
        np.testing.assert_allclose(el, -(i + 1) * lp, rtol=1e-5)


def test_sdk_loss_falls_and_sampling_reproduces(service: object) -> None:
    tc = service.create_lora_training_client(base_model=MICRO, rank=8, seed=0).result()
    tokens = list(TEXT)
    prompt = types.ModelInput.from_ints(tokens[:10])
    target = tokens[10:26]
    params = types.SamplingParams(max_tokens=len(target), temperature=0.0)

    def matches() -> int:
        sc = tc.save_weights_and_get_sampling_client().result()
        got = sc.sample(prompt, 1, params).result().sequences[0].tokens
        return sum(int(a == b) for a, b in zip(got, target, strict=True))

    before = matches()
    losses = []
    for _ in range(20):
        fb = tc.forward_backward([_datum(tokens)], "cross_entropy")
        tc.optim_step(types.AdamParams(learning_rate=2e-2))
        losses.append(fb.result().metrics["loss:sum"])
    assert losses[-1] < 0.5 * losses[0], losses
    assert all(np.isfinite(losses))
    after = matches()
    assert after > before, (before, after)


def test_sdk_compute_logprobs_and_stop(service: object) -> None:
    sc = service.create_sampling_client(base_model=MICRO).result()
    tokens = list(b"hello there")
    lps = sc.compute_logprobs(types.ModelInput.from_ints(tokens)).result()
    assert lps[0] is None
    assert len(lps) == len(tokens)
    assert all(x is not None and x < 0 for x in lps[1:])
    params = types.SamplingParams(max_tokens=20, temperature=1.0, seed=7, stop=["e"])
    a = sc.sample(types.ModelInput.from_ints(tokens), 3, params).result()
    b = sc.sample(types.ModelInput.from_ints(tokens), 3, params).result()
    assert [s.tokens for s in a.sequences] == [s.tokens for s in b.sequences]  # same seed
    for s in a.sequences:
        if s.stop_reason == "stop":
            assert s.tokens[-1] == ord("e")
        else:
            assert len(s.tokens) == 20
            assert ord("e") not in s.tokens


def test_sdk_two_d_targets_protobuf(service: object) -> None:
    tc = service.create_lora_training_client(base_model=MICRO, rank=2).result()
    tokens = list(b"two dimensional")
    n = len(tokens) - 1
    targets = np.stack([np.asarray(tokens[1:]), np.asarray(tokens[:-1])], axis=1).astype(np.int64)
    weights = np.zeros((n, 2), np.float32)
    weights[:, 0] = 1.0
    datum = types.Datum(
        model_input=types.ModelInput.from_ints(tokens[:-1]),
        loss_fn_inputs={"target_tokens": targets, "weights": weights},
    )
    out = tc.forward([datum, _datum(tokens)], "cross_entropy").result()
    lp2 = out.loss_fn_outputs[0]["logprobs"].to_numpy()
    lp1 = out.loss_fn_outputs[1]["logprobs"].to_numpy()
    assert lp2.shape == (n, 2)
    np.testing.assert_allclose(lp2[:, 0], lp1, rtol=1e-5)
    assert out.metrics["loss:sum"] == pytest.approx(float(-lp1.sum() * 2), rel=1e-4)


def test_sdk_rest_client(service: object) -> None:
    tc = service.create_lora_training_client(base_model=MICRO, rank=3).result()
    state = tc.save_state("rest-1").result().path
    sampler_path = tc.save_weights_for_sampler("rest-s").result().path
    rest = tinker.RestClient()
    caps = rest.get_server_capabilities().result()
    assert MICRO in [m.model_name for m in caps.supported_models]
    run = rest.get_training_run(tc.model_id).result()
    assert (run.base_model, run.lora_rank, run.is_lora) == (MICRO, 3, True)
    assert rest.get_training_run_by_tinker_path(state).result().training_run_id == tc.model_id
    info = rest.get_weights_info_by_tinker_path(sampler_path).result()
    assert (info.base_model, info.lora_rank) == (MICRO, 3)
    runs = rest.list_training_runs(limit=100).result()
    assert tc.model_id in [r.training_run_id for r in runs.training_runs]
    users = rest.list_user_checkpoints().result()
    assert state in [c.tinker_path for c in users.checkpoints]
    rest.publish_checkpoint_from_tinker_path(state).result()
    rest.set_checkpoint_ttl_from_tinker_path(state, 7200).result()
    listed = rest.list_checkpoints(tc.model_id).result().checkpoints
    assert [c.public for c in listed] == [True, False]
    assert listed[0].expires_at is not None
    rest.delete_checkpoint_from_tinker_path(sampler_path).result()
    assert [c.tinker_path for c in rest.list_checkpoints(tc.model_id).result().checkpoints] == [
        state
    ]
    session_id = tc.model_id.split(":train:")[0]
    assert session_id in rest.list_sessions().result().sessions
    assert tc.model_id in rest.get_session(session_id).result().training_run_ids
    tc.save_weights_and_get_sampling_client().result()
    sampler_id = rest.get_session(session_id).result().sampler_ids[-1]
    sampler = rest.get_sampler(sampler_id).result()
    assert (sampler.sampler_id, sampler.base_model) == (sampler_id, MICRO)
