"""``retrieve_future`` answers: the envelope is read first, then the expected result type."""

from __future__ import annotations

import numpy as np
import pytest

import tinkjax.types as T
from tinkjax.codec import (
    PROTOBUF_RESULT_TYPES,
    decode_future_answer,
    encode_forward_backward_output,
    encode_json,
    encode_sample_response,
)
from tinkjax.errors import DecodeError, RequestErrorCategory


def test_try_again_is_recognised_before_the_result_type() -> None:
    body = b'{"type": "try_again", "request_id": "r1", "queue_state": "paused_capacity"}'
    got = decode_future_answer(body, T.SaveWeightsResponse)
    assert got == T.TryAgainResponse(request_id="r1", queue_state="paused_capacity")


@pytest.mark.parametrize("category", ["user", "server", "unknown"])
def test_failures_carry_their_category(category: str) -> None:
    body = b'{"error": "bad input", "category": "%s"}' % category.encode()
    got = decode_future_answer(body, T.ForwardBackwardOutput)
    assert isinstance(got, T.RequestFailedResponse)
    assert got.error == "bad input"
    assert got.category is RequestErrorCategory(category)


def test_metadata_only_answer() -> None:
    body = b'{"status": "complete_metadata", "response_payload_size": 1234}'
    got = decode_future_answer(body, T.SampleResponse)
    assert got == T.MetadataOnlyResponse(status="complete_metadata", response_payload_size=1234)


def test_a_plain_result_decodes_as_the_expected_type() -> None:
    result = T.SaveWeightsResponse(path="tinker://r/weights/x", type="save_weights")
    assert decode_future_answer(encode_json(result), T.SaveWeightsResponse) == result
    # a result whose own fields happen to include ``type`` is not mistaken for try_again
    info = T.CreateModelResponse(model_id="s:train:0")
    assert decode_future_answer(encode_json(info), T.CreateModelResponse) == info


def test_protobuf_answers_dispatch_on_content_type() -> None:
    out = T.ForwardBackwardOutput(
        loss_fn_output_type="ArrayRecord",
        loss_fn_outputs=[{"logprobs": T.TensorData.from_numpy(np.array([-1.0], np.float32))}],
        metrics={"loss:sum": 1.0},
    )
    ct = "application/x-protobuf"
    body = encode_forward_backward_output(out)
    assert decode_future_answer(body, T.ForwardBackwardOutput, content_type=ct) == out
    resp = T.SampleResponse(sequences=[T.SampledSequence(stop_reason="stop", tokens_np=[1])])
    body = encode_sample_response(resp)
    assert decode_future_answer(body, T.SampleResponse, content_type=ct) == resp
    assert frozenset({T.ForwardBackwardOutput, T.SampleResponse}) == PROTOBUF_RESULT_TYPES
    with pytest.raises(TypeError, match="never sent as protobuf"):
        decode_future_answer(b"", T.SaveWeightsResponse, content_type=ct)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b'{"type": "try_again"}',
        b'{"error": 5}',
        b"[]",
        b'{"status": "complete_metadata"}',
    ],
)
def test_bad_answers_are_decode_errors(body: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_future_answer(body, T.SaveWeightsResponse)
