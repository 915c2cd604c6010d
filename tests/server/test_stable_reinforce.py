"""``stable_reinforce`` end to end with the official SDK: samplers created with
``record_stability_info=True``, datums naming their sequences through provenance spans, the
loss against a NumPy reference on the server's recorded logprobs, and the 400s for bad spans."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from tinkjax.server import ServerHandle

from .conftest import MICRO

tinker = pytest.importorskip("tinker")
types = tinker.types

PROMPT = list(b"the quick brown ")


@pytest.fixture(scope="module")
def service(sdk_env: None) -> Any:
    with tinker.ServiceClient() as client:
        yield client


def _datum(prompt: list[int], seq: Any, advantage: float, *, spans: bool = True) -> Any:
    """As the cookbook's ``rl_loop`` builds it: the targets over the prompt are padding, the
    client's ``logprobs`` here are deliberately wrong (the server must use its records)."""
    sampled = list(seq.tokens)
    ob_len = len(prompt) - 1
    datum = types.Datum(
        model_input=types.ModelInput.from_ints(prompt + sampled[:-1]),
        loss_fn_inputs={
            "target_tokens": [0] * ob_len + sampled,
            "logprobs": [0.0] * (ob_len + len(sampled)),
            "advantages": [0.0] * ob_len + [advantage] * len(sampled),
        },
    )
    if not spans:
        return datum
    sid = seq.sequence_id
    return datum.with_provenance(
        model_input=[
            types.PromptProvenanceSpan(sequence_id=sid, length=len(prompt)),
            types.SampledProvenanceSpan(sequence_id=sid, length=len(sampled) - 1),
        ],
        loss_fn_inputs=[
            types.PromptProvenanceSpan(sequence_id=sid, offset=1, length=len(prompt) - 1),
            types.SampledProvenanceSpan(sequence_id=sid, length=len(sampled)),
        ],
    )


def _reference(out: Any, seqs: list[Any], advs: list[float], cap: float) -> float:
    """Σ -min(exp(lp - q), cap) * A over the sampled targets, ``q`` the sampler's logprobs."""
    total = 0.0
    ob_len = len(PROMPT) - 1
    for o, seq, a in zip(out.loss_fn_outputs, seqs, advs, strict=True):
        lp = o["logprobs"].to_numpy().astype(np.float64)[ob_len:]
        q = np.asarray(seq.logprobs, np.float64)
        total += float(np.sum(-np.minimum(np.exp(lp - q), cap) * a))
    return total


def _sample(sc: Any, n: int = 3, seed: int = 5) -> list[Any]:
    params = types.SamplingParams(max_tokens=6, temperature=1.0, seed=seed, stop=[])
    return list(sc.sample(types.ModelInput.from_ints(PROMPT), n, params).result().sequences)


def test_sdk_stable_reinforce_uses_recorded_logprobs_and_trains(service: Any) -> None:
    tc = service.create_lora_training_client(base_model=MICRO, rank=4, seed=1).result()
    sc = tc.save_weights_and_get_sampling_client(record_stability_info=True).result()
    seqs = _sample(sc)
    assert len({s.sequence_id for s in seqs}) == 3
    advs = [1.0, -1.0, 0.5]
    data = [_datum(PROMPT, s, a) for s, a in zip(seqs, advs, strict=True)]
    # on-policy: the learner's logprobs are the sampler's (same weights, float32 numerics)
    out = tc.forward(data, "stable_reinforce").result()
    for o, seq in zip(out.loss_fn_outputs, seqs, strict=True):
        lp = o["logprobs"].to_numpy()[len(PROMPT) - 1 :]
        np.testing.assert_allclose(lp, seq.logprobs, rtol=1e-4, atol=1e-5)
    assert out.metrics["loss:sum"] == pytest.approx(_reference(out, seqs, advs, 2.0), rel=1e-4)

    # Move the policy, then train on the now stale samples (off-policy, async-RL style):
    # a low cap binds, and the value follows the truncated ratio against the recorded q.
    ce = types.Datum(
        model_input=types.ModelInput.from_ints(PROMPT[:-1]),
        loss_fn_inputs={"target_tokens": PROMPT[1:], "weights": [1.0] * (len(PROMPT) - 1)},
    )
    for _ in range(2):
        tc.forward_backward([ce], "cross_entropy")
        tc.optim_step(types.AdamParams(learning_rate=5e-2)).result()
    cap = 1.05
    fb = tc.forward_backward(data, "stable_reinforce", {"clip_high_threshold": cap}).result()
    ratios = np.concatenate(
        [
            np.exp(o["logprobs"].to_numpy()[len(PROMPT) - 1 :] - np.asarray(s.logprobs))
            for o, s in zip(fb.loss_fn_outputs, seqs, strict=True)
        ]
    )
    assert (ratios > cap).any() or (ratios < 1 / cap).any()  # really off-policy
    assert fb.metrics["loss:sum"] == pytest.approx(_reference(fb, seqs, advs, cap), rel=1e-4)

    # The step ascends the advantage-weighted log-likelihood of the samples.
    def objective(out: Any) -> float:
        lps = [x["logprobs"].to_numpy()[len(PROMPT) - 1 :].sum() for x in out.loss_fn_outputs]
        return float(np.dot(advs, lps))

    tc.optim_step(types.AdamParams(learning_rate=3e-2)).result()
    after = tc.forward(data, "stable_reinforce").result()
    assert objective(after) > objective(fb), (objective(fb), objective(after))


def _bad_request(tc: Any, data: list[Any], match: str) -> None:
    with pytest.raises(tinker.BadRequestError, match=match):
        tc.forward_backward(data, "stable_reinforce").result()


def test_sdk_stable_reinforce_refusals_name_the_field(service: Any, server: ServerHandle) -> None:
    tc = service.create_lora_training_client(base_model=MICRO, rank=2, seed=2).result()
    recorded = tc.save_weights_and_get_sampling_client(record_stability_info=True).result()
    plain = tc.save_weights_and_get_sampling_client().result()
    seq = _sample(recorded, 1)[0]
    good = _datum(PROMPT, seq, 1.0)
    before = tc.forward([good], "stable_reinforce").result().metrics["loss:sum"]

    # no provenance at all
    _bad_request(tc, [_datum(PROMPT, seq, 1.0, spans=False)], r"data\[0\]\.loss_fn_input_spans")
    # a sampler without record_stability_info: its ids are not recorded
    unrecorded = _sample(plain, 1)[0]
    assert unrecorded.sequence_id
    _bad_request(
        tc, [good, _datum(PROMPT, unrecorded, 1.0)],
        r"data\[1\]\.model_input_spans\[0\]\.sequence_id: .* unknown in this session",
    )  # fmt: skip
    # an id nobody issued
    fake = types.SampledProvenanceSpan(sequence_id="nope", length=len(seq.tokens))
    spans = [types.PromptProvenanceSpan(sequence_id=seq.sequence_id, offset=1, length=15), fake]
    _bad_request(
        tc, [good.with_provenance(good.model_input_spans, spans)],
        r"loss_fn_input_spans\[1\]\.sequence_id: sequence_id 'nope'",
    )  # fmt: skip
    # a span past the recorded tokens
    long = types.SampledProvenanceSpan(
        sequence_id=seq.sequence_id, offset=1, length=len(seq.tokens)
    )
    spans = [types.PromptProvenanceSpan(sequence_id=seq.sequence_id, offset=0, length=15), long]
    _bad_request(
        tc, [good.with_provenance(good.model_input_spans, spans)],
        r"loss_fn_input_spans\[1\]: \[1, 7\) lies beyond the recorded sampled tokens",
    )  # fmt: skip
    # tokens that are not the recorded ones
    other = next(t for t in range(97, 123) if t != seq.tokens[0])
    tampered = _datum(PROMPT, seq, 1.0)
    targets = tampered.loss_fn_inputs["target_tokens"].to_numpy().copy()
    targets[len(PROMPT) - 1] = other
    tampered = types.Datum(
        model_input=tampered.model_input,
        loss_fn_inputs={**tampered.loss_fn_inputs, "target_tokens": targets},
        model_input_spans=tampered.model_input_spans,
        loss_fn_input_spans=tampered.loss_fn_input_spans,
    )
    _bad_request(tc, [tampered], rf"loss_fn_input_spans\[1\]: token {other} at position 15 is not")
    # spans that do not tile the targets (the SDK checks tiling client-side, so skip it)
    short = types.Datum(
        model_input=good.model_input, loss_fn_inputs=good.loss_fn_inputs,
        model_input_spans=good.model_input_spans, loss_fn_input_spans=good.loss_fn_input_spans[:1],
    )  # fmt: skip
    _bad_request(tc, [short], r"loss_fn_input_spans: the spans cover 15 positions")
    # another session (same tenant) cannot name this session's sequences
    with tinker.ServiceClient() as other_service:
        tc2 = other_service.create_lora_training_client(base_model=MICRO, rank=2).result()
        _bad_request(tc2, [good], r"sequence_id: sequence_id '.*' is unknown in this session")
    # the cap must be positive
    with pytest.raises(tinker.BadRequestError, match="clip_high_threshold"):
        tc.forward_backward([good], "stable_reinforce", {"clip_high_threshold": 0.0}).result()
    # nothing was accumulated by the refusals: a forward gives the same loss as before
    assert tc.forward([good], "stable_reinforce").result().metrics["loss:sum"] == before


def test_record_needs_a_session_sampler(http: Any) -> None:
    from .conftest import post

    body = {
        "prompt": {"chunks": [{"type": "encoded_text", "tokens": PROMPT}]},
        "sampling_params": {"max_tokens": 2},
        "base_model": MICRO,
        "record_stability_info": True,
        "type": "sample",
    }
    r = post(http, "asample", body)
    assert r.status_code == 400, r.text
    assert "record_stability_info" in r.text
