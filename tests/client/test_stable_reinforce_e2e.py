"""tinkjax's own client with ``record_stability_info`` samplers, provenance-annotated datums and
``stable_reinforce``, and top-k prompt logprobs, over loopback against the local backend."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from tinkjax.client import ServiceClient
from tinkjax.errors import BadRequestError
from tinkjax.types import (
    Datum,
    ModelInput,
    PromptProvenanceSpan,
    SampledProvenanceSpan,
    SamplingParams,
)

pytestmark = pytest.mark.timeout(300)

MODEL = "tinkjax/bytelm-micro"
PROMPT = list(b"count: one two ")


def _datum(seq: Any, advantage: float) -> Datum:
    sampled, ob = list(seq.tokens), len(PROMPT) - 1
    sid = seq.sequence_id
    return Datum(
        model_input=ModelInput.from_ints(PROMPT + sampled[:-1]),
        loss_fn_inputs={
            "target_tokens": [0] * ob + sampled,
            "logprobs": [0.0] * (ob + len(sampled)),
            "advantages": [0.0] * ob + [advantage] * len(sampled),
        },
    ).with_provenance(
        [
            PromptProvenanceSpan(sequence_id=sid, offset=0, length=len(PROMPT)),
            SampledProvenanceSpan(sequence_id=sid, offset=0, length=len(sampled) - 1),
        ],
        [
            PromptProvenanceSpan(sequence_id=sid, offset=1, length=ob),
            SampledProvenanceSpan(sequence_id=sid, offset=0, length=len(sampled)),
        ],
    )


def test_client_stable_reinforce_and_topk(e2e_service: ServiceClient) -> None:
    tc = e2e_service.create_lora_training_client(MODEL, rank=2, seed=0).result(timeout=120)
    sc = tc.save_weights_and_get_sampling_client(record_stability_info=True).result(timeout=120)
    params = SamplingParams(max_tokens=5, temperature=1.0, seed=3, stop=[])
    res = sc.sample(
        ModelInput.from_ints(PROMPT), 2, params, include_prompt_logprobs=True,
        topk_prompt_logprobs=3,
    ).result(timeout=120)  # fmt: skip
    seqs = res.sequences
    assert all(s.sequence_id for s in seqs)
    assert seqs[0].sequence_id != seqs[1].sequence_id
    # top-k: row 0 empty, the others in decreasing order, containing the prompt token whenever
    # its logprob is at least the k-th best
    topk = res.topk_prompt_logprobs
    assert topk is not None
    assert topk[0] is None
    assert len(topk) == len(PROMPT)
    for i, row in enumerate(topk[1:], start=1):
        assert row is not None
        assert len(row) == 3
        lps = [lp for _, lp in row]
        assert lps == sorted(lps, reverse=True)
        own = res.prompt_logprobs[i]
        if own is not None and own > lps[-1] + 1e-4:
            assert PROMPT[i] in [t for t, _ in row]
    dense = res.topk_prompt_logprobs_np
    assert dense is not None
    assert dense.token_ids.shape == (len(PROMPT), 3)

    advs = [1.0, -0.5]
    data = [_datum(s, a) for s, a in zip(seqs, advs, strict=True)]
    out = tc.forward_backward(data, "stable_reinforce").result(timeout=120)
    expected = 0.0
    for o, s, a in zip(out.loss_fn_outputs, seqs, advs, strict=True):
        lp = o["logprobs"].to_numpy().astype(np.float64)[len(PROMPT) - 1 :]
        expected += float(np.sum(-np.minimum(np.exp(lp - np.asarray(s.logprobs)), 2.0) * a))
    assert out.metrics["loss:sum"] == pytest.approx(expected, rel=1e-4)

    bad = data[0].with_provenance(
        data[0].model_input_spans or [],
        [
            PromptProvenanceSpan(sequence_id=seqs[0].sequence_id, offset=1, length=14),
            SampledProvenanceSpan(sequence_id="missing", offset=0, length=5),
        ],
    )
    with pytest.raises(BadRequestError, match=r"loss_fn_input_spans\[1\]\.sequence_id"):
        tc.forward_backward([bad], "stable_reinforce").result(timeout=120)
