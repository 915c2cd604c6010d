"""Bad input raises tinkjax's documented exceptions naming the field, never a bare error.

``DecodeError`` for malformed JSON or protobuf, ``TensorError`` for a wrong dtype or a shape
that does not match its data, ``LossInputKeyError`` for an unknown loss-function input key; all
are ``WireFormatError`` with a ``field`` attribute.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tinkjax.types as T
from tinkjax.codec import (
    decode_forward_backward_output,
    decode_forward_backward_request,
    decode_json,
    decode_sample_response,
    encode_forward_backward_output,
    encode_forward_backward_request,
    encode_json,
    encode_sample_response,
)
from tinkjax.codec._pb import tinkjax_wire_pb2 as pb
from tinkjax.errors import DecodeError, LossInputKeyError, TensorError, WireFormatError

from . import strategies as S

DECODERS: list[Callable[[bytes], Any]] = [
    decode_forward_backward_request,
    decode_forward_backward_output,
    decode_sample_response,
]


# -- malformed bytes --------------------------------------------------------------------------
@pytest.mark.parametrize("decode", DECODERS, ids=lambda f: f.__name__)
@pytest.mark.parametrize(
    "body",
    [
        b"\xff",  # truncated varint key
        b"\x1a\x05ab",  # length-delimited field overruns the message
        b"\x07",  # field number 0
        b"\x0b",  # wire type 3 (group start)
        b"\x12\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",  # varint longer than 10 bytes
    ],
)
def test_malformed_protobuf_is_a_decode_error(decode: Callable[[bytes], Any], body: bytes) -> None:
    with pytest.raises(DecodeError, match="malformed protobuf"):
        decode(body)


def _truncate_everywhere(data: bytes, decode: Callable[[bytes], Any]) -> None:
    for cut in range(len(data)):
        with contextlib.suppress(WireFormatError):
            decode(data[:cut])


def test_every_truncation_of_a_request_is_a_tinkjax_error() -> None:
    datum = T.Datum(
        model_input=T.ModelInput.from_ints([1, 2, 3]),
        loss_fn_inputs={"target_tokens": [1, 2, 3], "weights": [1.0, 0.0, 1.0]},  # type: ignore[dict-item]
    )
    req = T.ForwardBackwardRequest(
        forward_backward_input=T.ForwardBackwardInput(data=[datum], loss_fn="cross_entropy"),
        model_id="m",
        seq_id=1,
    )
    data = encode_forward_backward_request(req)
    _truncate_everywhere(data, decode_forward_backward_request)
    with pytest.raises(DecodeError):
        decode_forward_backward_request(data[:-1])


def test_every_truncation_of_an_output_is_a_tinkjax_error() -> None:
    out = T.ForwardBackwardOutput(
        loss_fn_output_type="ArrayRecord",
        loss_fn_outputs=[{"logprobs": T.TensorData.from_numpy(np.array([-1.0, -2.0], np.float32))}],
        metrics={"loss:sum": 3.0},
    )
    data = encode_forward_backward_output(out)
    _truncate_everywhere(data, decode_forward_backward_output)


FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _corrupted(encoded: bytes, data: st.DataObject) -> bytes:
    """``encoded`` with 1–3 bytes overwritten at drawn positions (unchanged when empty)."""
    body = bytearray(encoded)
    for _ in range(data.draw(st.integers(1, 3)) if body else 0):
        i = data.draw(st.integers(0, len(body) - 1))
        body[i] = data.draw(st.integers(0, 255))
    return bytes(body)


@FUZZ
@given(S.fwd_request(proto=True), st.data())
def test_corrupted_request_bytes_raise_only_tinkjax_errors(req: Any, data: st.DataObject) -> None:
    body = _corrupted(encode_forward_backward_request(req), data)
    with contextlib.suppress(WireFormatError):
        decode_forward_backward_request(body)


@FUZZ
@given(S.forward_backward_output(), st.data())
def test_corrupted_output_bytes_raise_only_tinkjax_errors(out: Any, data: st.DataObject) -> None:
    body = _corrupted(encode_forward_backward_output(out), data)
    with contextlib.suppress(WireFormatError):
        decode_forward_backward_output(body)


@FUZZ
@given(S.sample_response(proto=True), st.data())
def test_corrupted_sample_bytes_raise_only_tinkjax_errors(resp: Any, data: st.DataObject) -> None:
    body = _corrupted(encode_sample_response(resp), data)
    with contextlib.suppress(WireFormatError):
        decode_sample_response(body)


@FUZZ
@given(st.binary(max_size=48))
def test_random_bytes_raise_only_tinkjax_errors(body: bytes) -> None:
    for decode in DECODERS:
        with contextlib.suppress(WireFormatError):
            decode(body)


# -- wrong dtype ------------------------------------------------------------------------------
def _request_with_tensor(tensor: pb.Tensor, name: str = "weights") -> bytes:
    msg = pb.ForwardBackwardRequest(model_id="m", seq_id=1, loss_fn="cross_entropy")
    msg.data.add().loss_fn_inputs[name].CopyFrom(tensor)
    return bytes(msg.SerializeToString())


def test_wrong_dtype_names_the_field() -> None:
    with pytest.raises(TensorError) as info:
        T.TensorData(data=[1, 2], dtype="int8")  # type: ignore[arg-type]
    assert info.value.field == "dtype"
    with pytest.raises(DecodeError) as dinfo:
        decode_json(b'{"data":[1],"dtype":"bfloat16"}', T.TensorData)
    assert dinfo.value.field is not None
    assert "dtype" in dinfo.value.field
    # protobuf: unspecified and unknown enum values
    for dtype in (pb.DTYPE_UNSPECIFIED, 99):
        body = _request_with_tensor(pb.Tensor(dense=b"\0" * 8, dtype=dtype))  # type: ignore[arg-type]
        with pytest.raises(TensorError) as tinfo:
            decode_forward_backward_request(body)
        assert tinfo.value.field == "data[0].loss_fn_inputs.weights.dtype"
        assert "weights" in str(tinfo.value)
    # a raw value whose dtype cannot be a tensor
    with pytest.raises(TensorError) as cinfo:
        T.Datum(model_input=T.ModelInput.empty(), loss_fn_inputs={"x": np.array(["a", "b"])})  # type: ignore[dict-item]
    assert cinfo.value.field == "loss_fn_inputs.x"
    with pytest.raises(TensorError) as linfo:
        T.Datum(model_input=T.ModelInput.empty(), loss_fn_inputs={"weights": ["a", "b"]})  # type: ignore[dict-item]
    assert linfo.value.field == "loss_fn_inputs.weights"
    with pytest.raises(TensorError) as finfo:
        T.Datum(model_input=T.ModelInput.empty(), loss_fn_inputs={"target_tokens": [1.5]})  # type: ignore[dict-item]
    assert finfo.value.field == "loss_fn_inputs.target_tokens"


def test_output_dtype_errors_name_the_field() -> None:
    msg = pb.ForwardBackwardOutput(loss_fn_output_type="ArrayRecord")
    bt = msg.loss_fn_outputs.add(num_datums=1).fields["logprobs"]
    bt.data = b"\0" * 4
    bt.offsets = np.array([0, 4], "<i8").tobytes()
    bt.dtype = 42  # type: ignore[assignment]
    with pytest.raises(TensorError) as info:
        decode_forward_backward_output(msg.SerializeToString())
    assert info.value.field == "loss_fn_outputs[0].logprobs.dtype"


# -- shape / data mismatch --------------------------------------------------------------------
def test_shape_data_mismatch_names_the_field() -> None:
    with pytest.raises(TensorError) as info:
        T.TensorData(data=[1.0, 2.0, 3.0], dtype="float32", shape=[2, 2])
    assert info.value.field == "shape"
    body = _request_with_tensor(
        pb.Tensor(dense=np.zeros(3, "<f4").tobytes(), dtype=pb.DTYPE_FLOAT32, shape=[2, 2])
    )
    with pytest.raises(TensorError) as pinfo:
        decode_forward_backward_request(body)
    assert pinfo.value.field == "data[0].loss_fn_inputs.weights.shape"
    # a buffer that is not a whole number of values
    body = _request_with_tensor(pb.Tensor(dense=b"\0" * 5, dtype=pb.DTYPE_FLOAT32))
    with pytest.raises(TensorError) as binfo:
        decode_forward_backward_request(body)
    assert binfo.value.field == "data[0].loss_fn_inputs.weights"
    # CSR indices that disagree with the values
    sparse = pb.Tensor(dtype=pb.DTYPE_FLOAT32, shape=[2, 2])
    sparse.sparse_csr.values = np.ones(2, "<f4").tobytes()
    sparse.sparse_csr.crow_indices = np.array([0, 1, 3], "<i8").tobytes()
    sparse.sparse_csr.col_indices = np.array([0, 1], "<i8").tobytes()
    with pytest.raises(TensorError) as sinfo:
        decode_forward_backward_request(_request_with_tensor(sparse))
    assert sinfo.value.field == "data[0].loss_fn_inputs.weights.sparse_crow_indices"


def test_token_chunk_of_odd_length_names_the_field() -> None:
    msg = pb.ForwardBackwardRequest(model_id="m", seq_id=1, loss_fn="cross_entropy")
    msg.data.add().model_input.add().encoded_text.tokens = b"\0" * 6
    with pytest.raises(TensorError) as info:
        decode_forward_backward_request(msg.SerializeToString())
    assert info.value.field == "data[0].model_input[0].tokens"


def test_batched_tensor_offsets_must_fit_the_data() -> None:
    msg = pb.ForwardBackwardOutput(loss_fn_output_type="ArrayRecord")
    bt = msg.loss_fn_outputs.add(num_datums=2).fields["logprobs"]
    bt.data = np.zeros(3, "<f4").tobytes()
    bt.dtype = pb.DTYPE_FLOAT32
    for offsets in ([0, 4, 16], [0, 8, 4, 12], [4, 12], [0, 6, 12], []):
        bt.offsets = np.array(offsets, "<i8").tobytes()
        with pytest.raises(TensorError) as info:
            decode_forward_backward_output(msg.SerializeToString())
        assert info.value.field == "loss_fn_outputs[0].logprobs.offsets"
    # num_datums disagreeing with the offsets
    bt.offsets = np.array([0, 4, 12], "<i8").tobytes()
    msg.loss_fn_outputs[0].num_datums = 3
    with pytest.raises(TensorError) as ninfo:
        decode_forward_backward_output(msg.SerializeToString())
    assert ninfo.value.field == "loss_fn_outputs[0].logprobs"
    # a trailing shape that does not divide a datum's values
    msg.loss_fn_outputs[0].num_datums = 2
    bt.trailing_shape.append(2)
    with pytest.raises(TensorError) as tinfo:
        decode_forward_backward_output(msg.SerializeToString())
    assert tinfo.value.field == "loss_fn_outputs[0].logprobs"


def test_sample_response_mismatches_name_the_field() -> None:
    with pytest.raises(TensorError) as info:
        T.SampledSequence(stop_reason="stop", tokens_np=[1, 2], logprobs_np=[-1.0])
    assert info.value.field == "logprobs"
    msg = pb.SampleResponse()
    seq = msg.sequences.add(tokens=np.array([1, 2], "<i4").tobytes())
    seq.logprobs = np.zeros(3, "<f4").tobytes()
    with pytest.raises(WireFormatError) as sinfo:
        decode_sample_response(msg.SerializeToString())
    assert sinfo.value.field == "sequences[0]"
    assert "logprobs" in str(sinfo.value)
    seq.logprobs = np.zeros(2, "<f4").tobytes()
    seq.stop_reason = 7  # type: ignore[assignment]
    with pytest.raises(DecodeError) as rinfo:
        decode_sample_response(msg.SerializeToString())
    assert rinfo.value.field == "sequences[0].stop_reason"
    seq.stop_reason = pb.STOP_REASON_STOP
    topk = msg.topk_prompt_logprobs
    topk.k, topk.length = 2, 2
    topk.token_ids = np.zeros(3, "<i4").tobytes()
    topk.logprobs = np.zeros(4, "<f4").tobytes()
    with pytest.raises(TensorError) as kinfo:
        decode_sample_response(msg.SerializeToString())
    assert kinfo.value.field is not None
    assert kinfo.value.field.startswith("topk_prompt_logprobs")
    with pytest.raises(DecodeError) as iinfo:
        decode_sample_response(b"", sequence_ids=["a"])
    assert iinfo.value.field == "sequences"


# -- unknown loss-input key -------------------------------------------------------------------
def test_unknown_loss_input_key_names_the_key() -> None:
    with pytest.raises(LossInputKeyError) as info:
        T.Datum(model_input=T.ModelInput.from_ints([1]), loss_fn_inputs={"weight": [1.0]})  # type: ignore[dict-item]
    assert info.value.field == "loss_fn_inputs.weight"
    assert "'weight'" in str(info.value)
    assert "weights" in str(info.value)
    assert isinstance(info.value, WireFormatError)
    # Arrays and TensorData are accepted under any key (only plain lists need the dtype rule).
    d = T.Datum(
        model_input=T.ModelInput.from_ints([1]),
        loss_fn_inputs={"custom": np.array([1.0], np.float32)},
    )  # type: ignore[dict-item]
    assert d.loss_fn_inputs["custom"].dtype == "float32"


@pytest.mark.parametrize(
    ("key", "values", "dtype"),
    [
        ("target_tokens", [1, 2], "int64"),
        ("weights", [1, 0], "float32"),
        ("advantages", [0.5, -1.0], "float32"),
        ("logprobs", [-1, -2], "float32"),
        ("clip_low_threshold", [0.8], "float32"),
        ("clip_high_threshold", [1.2], "float32"),
        ("sequence_ratio_mask", [1, 0], "float32"),
    ],
)
def test_known_list_keys_are_cast_by_key(key: str, values: list[Any], dtype: str) -> None:
    d = T.Datum(model_input=T.ModelInput.from_ints([1, 2]), loss_fn_inputs={key: values})  # type: ignore[dict-item]
    td = d.loss_fn_inputs[key]
    assert td.dtype == dtype
    assert td.data.dtype == np.dtype(dtype)
    assert td.data.tolist() == np.asarray(values, dtype=dtype).tolist()


def test_json_decode_errors_are_never_bare() -> None:
    bodies = [
        b'{"forward_backward_input": {"data": [{"model_input": {"chunks": []}, '
        b'"loss_fn_inputs": {"w": {"data": [1, 2, 3], "dtype": "float32", "shape": [2, 2]}}}], '
        b'"loss_fn": "ppo"}, "model_id": "m"}',
        b'{"stop": [1, "a"]}',
        b'{"model_id": "m", "adam_params": {}, "optimizer_params": {"type": "dimuon", '
        b'"learning_rate": 1}}',
    ]
    types: list[type] = [T.ForwardBackwardRequest, T.SamplingParams, T.OptimStepRequest]
    fields = ["$.forward_backward_input.data[0].loss_fn_inputs", "$.stop", "$.optimizer_params"]
    for body, tp, field in zip(bodies, types, fields, strict=True):
        with pytest.raises(DecodeError) as info:
            decode_json(body, tp)
        assert info.value.field is not None
        assert info.value.field.startswith(field), info.value.field
    assert encode_json(T.SamplingParams(stop=["a"])) == (
        b'{"stop":["a"],"temperature":1.0,"top_k":-1,"top_p":1.0}'
    )
