"""Top-k logprobs: tinkjax's list accessors read the dense matrices exactly as the official
SDK's ``SampleResponse.topk_prompt_logprobs`` / ``SampledSequence.topk_logprobs`` do, through
protobuf and JSON."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import tinkjax.types as T
from tinkjax.codec import decode_json, decode_sample_response, encode_json, encode_sample_response

from . import official as O

EMPTY = -99999.0


@st.composite
def topk(draw: st.DrawFn) -> T.TopkLogprobs:
    """Rows of ``k`` cells; some rows empty, some with empty trailing cells (``length >= 1``:
    both decoders read an empty matrix as not requested)."""
    n, k = draw(st.integers(1, 5)), draw(st.integers(1, 4))
    ids = np.asarray(draw(st.lists(st.integers(1, 300), min_size=n * k, max_size=n * k)))
    lps = -np.asarray(
        draw(st.lists(st.floats(0.0, 30.0, width=32), min_size=n * k, max_size=n * k))
    )
    ids, lps = ids.reshape(n, k).astype(np.int32), lps.reshape(n, k).astype(np.float32)
    for i in range(n):
        keep = draw(st.integers(0, k))  # 0: the whole row is "not computed"
        ids[i, keep:], lps[i, keep:] = 0, EMPTY
    return T.TopkLogprobs(token_ids=ids, logprobs=lps, k=k, length=n)


@settings(max_examples=40, deadline=None)
@given(topk(), topk())
def test_topk_accessors_match_the_official_sdk(
    prompt: T.TopkLogprobs, sample: T.TopkLogprobs
) -> None:
    resp = T.SampleResponse(
        sequences=[
            T.SampledSequence(
                stop_reason="length", tokens_np=np.arange(sample.length),
                logprobs_np=np.full(sample.length, -1.0), sequence_id="s0",
                topk_logprobs_np=sample,
            )
        ],
        topk_prompt_logprobs_np=prompt,
    )  # fmt: skip
    official = O.response_conv.deserialize_sample_response(encode_sample_response(resp))
    assert resp.topk_prompt_logprobs == official.topk_prompt_logprobs
    assert resp.sequences[0].topk_logprobs == official.sequences[0].topk_logprobs
    for back in (
        decode_sample_response(encode_sample_response(resp), sequence_ids=["s0"]),
        decode_json(encode_json(resp), T.SampleResponse),
    ):
        assert back == resp
        assert back.topk_prompt_logprobs == resp.topk_prompt_logprobs
        assert back.sequences[0].topk_logprobs == resp.sequences[0].topk_logprobs


def test_topk_not_requested_is_none() -> None:
    resp = T.SampleResponse(sequences=[T.SampledSequence(stop_reason="stop", tokens_np=[1])])
    assert resp.topk_prompt_logprobs is None
    assert resp.sequences[0].topk_logprobs is None
