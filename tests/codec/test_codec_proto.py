"""Protobuf codec: round trips, and byte compatibility with the official SDK 0.38.0 both ways.

* ours → ours: ``decode(encode(x)) == x`` for requests (fwd/bwd and forward-only), outputs and
  sample responses.
* ours → official: our request bytes parse with the SDK's generated module to exactly the
  message its own ``request_conv`` builds; our response bytes decode with its ``response_conv``
  to the same values.
* official → ours: the bytes the SDK sends (``request_conv``) and the responses written with its
  generated module decode with ours to the original values.
* the two ``.proto`` schemas agree field by field.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from google.protobuf import descriptor_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tinkjax.types as T
from tinkjax.codec import (
    decode_forward_backward_output,
    decode_forward_backward_request,
    decode_sample_response,
    encode_forward_backward_output,
    encode_forward_backward_request,
    encode_sample_response,
)
from tinkjax.codec._pb import tinkjax_wire_pb2 as mpb
from tinkjax.codec._proto_request_write import (
    WeightedChunk,
    encode_datum_prefixes,
    encode_weighted_request,
)
from tinkjax.errors import TensorError

from . import official as O
from . import strategies as S

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# -- requests ---------------------------------------------------------------------------------
@SETTINGS
@given(S.fwd_request(proto=True))
def test_request_round_trip(req: T.ForwardBackwardRequest | T.ForwardRequest) -> None:
    data = encode_forward_backward_request(req)
    back = decode_forward_backward_request(data)
    assert type(back) is type(req)
    assert back == req
    # Both generated modules accept the bytes.
    mpb.ForwardBackwardRequest().ParseFromString(data)
    O.opb.ForwardBackwardRequest().ParseFromString(data)


@SETTINGS
@given(S.fwd_request(proto=True))
def test_request_bytes_match_the_official_sdk(
    req: T.ForwardBackwardRequest | T.ForwardRequest,
) -> None:
    official_msg = O.official_request_proto(req)
    # ours → official: our bytes parse, with the SDK's module, to the SDK's own message.
    ours = O.opb.ForwardBackwardRequest()
    ours.ParseFromString(encode_forward_backward_request(req))
    assert ours == official_msg
    # official → ours: the SDK's bytes decode with ours to the original request.
    back = decode_forward_backward_request(official_msg.SerializeToString())
    assert type(back) is type(req)
    assert back == req


def test_request_official_values_spot_check() -> None:
    """A hand-written request: every decoded field checked by name against the SDK's message."""
    datum = T.Datum(
        model_input=T.ModelInput(
            chunks=[
                T.EncodedTextChunk(tokens=[1, 2, 2**31 - 1]),
                T.ImageChunk(data=b"\x89PNG", format="png", expected_tokens=4),
                T.EncodedTextChunk(tokens=[-5]),
            ]
        ),
        loss_fn_inputs={
            "target_tokens": [7, 8, 9, 10, 11, 12, 13, 14],  # type: ignore[dict-item]
            "weights": T.TensorData.from_numpy_sparse(
                np.array([[0, 0.5, 0, 0], [0, 0, 0, 0], [0, 0, 0, 2]], np.float32)
            ),
        },
    ).with_provenance(
        [T.PromptProvenanceSpan(sequence_id="s", offset=0, length=8)],
        [T.SampledProvenanceSpan(sequence_id="s", offset=3, length=8)],
    )
    req = T.ForwardRequest(
        forward_input=T.ForwardBackwardInput(
            data=[datum], loss_fn="ppo", loss_fn_config={"clip_low_threshold": 0.8, "mode": "x"}
        ),
        model_id="sess:train:0",
        seq_id=5,
    )
    msg = O.opb.ForwardBackwardRequest()
    msg.ParseFromString(encode_forward_backward_request(req))
    assert (msg.model_id, msg.seq_id, msg.loss_fn, msg.forward_only) == (
        "sess:train:0",
        5,
        "ppo",
        True,
    )
    assert dict(msg.loss_fn_config) == {"clip_low_threshold": 0.8}
    assert msg.loss_fn_config_v2["clip_low_threshold"].number == 0.8
    assert msg.loss_fn_config_v2["mode"].text == "x"
    (d,) = msg.data
    assert [c.WhichOneof("chunk") for c in d.model_input] == [
        "encoded_text",
        "image",
        "encoded_text",
    ]
    assert np.frombuffer(d.model_input[0].encoded_text.tokens, "<i4").tolist() == [1, 2, 2**31 - 1]
    assert d.model_input[1].image.expected_tokens == 4
    tt = d.loss_fn_inputs["target_tokens"]
    assert (tt.dtype, list(tt.shape)) == (O.opb.DTYPE_INT64, [8])
    assert np.frombuffer(tt.dense, "<i8").tolist() == [7, 8, 9, 10, 11, 12, 13, 14]
    w = d.loss_fn_inputs["weights"]
    assert w.WhichOneof("encoding") == "sparse_csr"
    assert list(w.shape) == [3, 4]
    assert np.frombuffer(w.sparse_csr.values, "<f4").tolist() == [0.5, 2.0]
    assert np.frombuffer(w.sparse_csr.crow_indices, "<i8").tolist() == [0, 1, 1, 2]
    assert np.frombuffer(w.sparse_csr.col_indices, "<i8").tolist() == [1, 3]
    assert d.model_input_spans[0].WhichOneof("span") == "prompt_tokens"
    assert d.loss_fn_input_spans[0].sampled_tokens.offset == 3
    assert msg == O.official_request_proto(req)


# -- forward/backward output ------------------------------------------------------------------
@SETTINGS
@given(S.forward_backward_output())
def test_output_round_trip(out: T.ForwardBackwardOutput) -> None:
    back = decode_forward_backward_output(encode_forward_backward_output(out))
    assert back == out


@SETTINGS
@given(S.forward_backward_output(), st.integers(1, 3))
def test_output_interop_with_the_official_sdk(out: T.ForwardBackwardOutput, records: int) -> None:
    # ours → official
    ours = encode_forward_backward_output(out)
    assert (
        O.official_output_to_tinkjax(O.response_conv.deserialize_forward_backward_output(ours))
        == out
    )
    # official-module bytes (one or several records) → ours, and → the SDK's own decoder
    theirs = O.build_output_pb(out, records=records)
    assert decode_forward_backward_output(theirs) == out
    assert (
        O.official_output_to_tinkjax(O.response_conv.deserialize_forward_backward_output(theirs))
        == out
    )


def test_output_widens_int32_and_bfloat16_like_the_sdk() -> None:
    msg = O.opb.ForwardBackwardOutput(loss_fn_output_type="tinker.losses:ArrayRecord")
    msg.metrics["loss:sum"] = 1.5
    rec = msg.loss_fn_outputs.add(num_datums=2)
    ints = rec.fields["ids"]
    ints.dtype = O.opb.DTYPE_INT32
    ints.data = np.array([1, -2, 3], "<i4").tobytes()
    ints.offsets = np.array([0, 4, 12], "<i8").tobytes()
    bf = rec.fields["lp"]
    bf.dtype = O.opb.DTYPE_BFLOAT16
    values = np.array([-1.0, 0.5, -0.25], np.float32)
    bf.data = (values.view(np.uint32) >> 16).astype("<u2").tobytes()
    bf.offsets = np.array([0, 2, 6], "<i8").tobytes()
    body = msg.SerializeToString()
    ours = decode_forward_backward_output(body)
    theirs = O.official_output_to_tinkjax(O.response_conv.deserialize_forward_backward_output(body))
    assert ours == theirs
    assert ours.loss_fn_output_type == "ArrayRecord"
    assert ours.loss_fn_outputs[1]["ids"].dtype == "int64"
    assert ours.loss_fn_outputs[1]["ids"].data.tolist() == [-2, 3]
    assert ours.loss_fn_outputs[1]["lp"].data.tolist() == [0.5, -0.25]


# -- sample response --------------------------------------------------------------------------
@SETTINGS
@given(S.sample_response(proto=True))
def test_sample_response_round_trip(resp: T.SampleResponse) -> None:
    back = decode_sample_response(encode_sample_response(resp))
    assert back == resp
    ids = [f"s{i}" for i in range(len(resp.sequences))]
    stamped = decode_sample_response(encode_sample_response(resp), sequence_ids=ids)
    assert [s.sequence_id for s in stamped.sequences] == ids


def _as_official_sees_it(resp: T.SampleResponse) -> T.SampleResponse:
    """The SDK maps an empty ``logprobs`` buffer to ``None``."""
    seen: T.SampleResponse = T.replace(
        resp,
        sequences=[
            T.replace(s, logprobs_np=None)
            if s.logprobs_np is not None and s.logprobs_np.size == 0
            else s
            for s in resp.sequences
        ],
    )
    return seen


@SETTINGS
@given(S.sample_response(proto=True))
def test_sample_response_interop_with_the_official_sdk(resp: T.SampleResponse) -> None:
    expected = _as_official_sees_it(resp)
    ours = encode_sample_response(resp)
    assert (
        O.official_sample_to_tinkjax(O.response_conv.deserialize_sample_response(ours)) == expected
    )
    theirs = O.build_sample_pb(resp)
    assert decode_sample_response(theirs) == resp
    assert (
        O.official_sample_to_tinkjax(O.response_conv.deserialize_sample_response(theirs))
        == expected
    )


def test_shapeless_response_tensors_get_their_shape_written() -> None:
    """The SDK's decoder needs the shape; a 1-D tensor without one is written as ``[n]``."""
    td = T.TensorData(data=[-1.0, -2.0, -3.0], dtype="float32")
    assert td.shape is None
    resp = T.SampleResponse(sequences=[], target_prompt_logprobs=td)
    theirs = O.response_conv.deserialize_sample_response(encode_sample_response(resp))
    assert theirs.target_prompt_logprobs is not None
    assert theirs.target_prompt_logprobs.shape == [3]
    ours = decode_sample_response(encode_sample_response(resp))
    assert ours.target_prompt_logprobs == T.TensorData(data=td.data, dtype="float32", shape=[3])


def test_sample_response_prompt_logprobs_nan_is_none() -> None:
    resp = T.SampleResponse(
        sequences=[
            T.SampledSequence(stop_reason="length", tokens_np=[3, 4], logprobs_np=[-0.5, -1.0])
        ],
        prompt_logprobs_np=np.array([np.nan, -2.0, -3.0], np.float32),
    )
    ours = decode_sample_response(encode_sample_response(resp))
    theirs = O.response_conv.deserialize_sample_response(encode_sample_response(resp))
    assert ours.prompt_logprobs == [None, -2.0, -3.0]
    assert theirs.sequences[0].tokens_np is not None
    assert ours.sequences[0].tokens == theirs.sequences[0].tokens_np.tolist() == [3, 4]
    assert ours.sequences[0].stop_reason == theirs.sequences[0].stop_reason == "length"


# -- schema -----------------------------------------------------------------------------------
def _messages(file: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """``name → DescriptorProto`` with the package stripped from every type reference."""
    proto = descriptor_pb2.FileDescriptorProto()
    file.CopyToProto(proto)
    assert proto.syntax == "proto3"
    prefix = f".{proto.package}."

    def strip(m: Any) -> Any:
        for f in m.field:
            if f.type_name.startswith(prefix):
                f.type_name = "." + f.type_name[len(prefix) :]
        for n in m.nested_type:  # map entries
            strip(n)
        return m

    return {m.name: strip(m) for m in proto.message_type}, {e.name: e for e in proto.enum_type}


def _sig(d: Any) -> list[tuple[Any, ...]]:
    return sorted(
        (
            f.name,
            f.number,
            f.type,
            f.label,
            f.type_name,
            f.oneof_index if f.HasField("oneof_index") else None,
            f.proto3_optional,
        )
        for f in d.field
    )


def test_proto_schema_matches_the_official_descriptor() -> None:
    ours, our_enums = _messages(mpb.DESCRIPTOR)
    theirs, their_enums = _messages(O.opb.DESCRIPTOR)
    # Only the sampling-parameter messages (unused on the wire in 0.38.0) are left out.
    assert set(theirs) - set(ours) == {"SamplingParams", "StopStrings", "StopTokens"}
    assert set(ours) <= set(theirs)
    for name, m in ours.items():
        t = theirs[name]
        # Field by field: name, number, type, label, type_name, oneof, proto3 optional.
        assert _sig(m) == _sig(t), name
        assert [o.name for o in m.oneof_decl] == [o.name for o in t.oneof_decl], name
        assert sorted((n.name, _sig(n)) for n in m.nested_type) == sorted(
            (n.name, _sig(n)) for n in t.nested_type
        ), name
    assert our_enums == their_enums


@pytest.mark.parametrize(
    "name", ["ForwardBackwardRequest", "ForwardBackwardOutput", "SampleResponse"]
)
def test_wire_messages_reach_only_shared_types(name: str) -> None:
    seen: set[str] = set()
    todo = [O.opb.DESCRIPTOR.message_types_by_name[name]]
    while todo:
        m = todo.pop()
        if m.full_name in seen:
            continue
        seen.add(m.full_name)
        todo.extend(f.message_type for f in m.fields if f.message_type is not None)
        todo.extend(m.nested_types)
    top = {n.split(".")[1] for n in seen}
    assert top <= set(mpb.DESCRIPTOR.message_types_by_name)


def _ld(number: int, payload: bytes) -> bytes:
    return bytes([(number << 3) | 2]) + read_varint(len(payload)) + payload


def read_varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def test_non_canonical_layouts_decode_like_the_generated_module() -> None:
    """Field orders and encodings other than the writers' (the fast paths' layout) still decode:
    unpacked shape, dtype first, a repeated ``dense`` (last wins), a 200-byte name."""
    values = np.arange(6, dtype="<f4")
    tensor = (
        b"\x18\x01"  # dtype first
        + b"\x20\x02\x20\x03"  # shape [2, 3] as unpacked varints
        + _ld(1, b"\0" * 8)  # a dense buffer that a later one replaces
        + _ld(1, values.tobytes())
    )
    name = "n" * 200
    entry = _ld(2, tensor) + _ld(1, name.encode())  # value before key
    chunk = _ld(1, _ld(1, np.array([5, 6], "<i4").tobytes()) + b"")  # encoded_text
    datum = _ld(1, chunk) + _ld(2, entry)
    body = b"\x0a\x01m" + b"\x10\x07" + _ld(3, datum) + _ld(4, b"ppo")
    ours = decode_forward_backward_request(body)
    ref = mpb.ForwardBackwardRequest()
    ref.ParseFromString(body)
    assert isinstance(ours, T.ForwardBackwardRequest)
    (d,) = ours.forward_backward_input.data
    td = d.loss_fn_inputs[name]
    assert td.shape == list(ref.data[0].loss_fn_inputs[name].shape) == [2, 3]
    assert td.data.tobytes() == ref.data[0].loss_fn_inputs[name].dense == values.tobytes()
    assert d.model_input.to_ints() == [5, 6]
    assert (ours.model_id, ours.seq_id, ours.forward_backward_input.loss_fn) == ("m", 7, "ppo")


@SETTINGS
@given(
    st.lists(
        st.tuples(S.datum(proto=True), st.integers(0, 40), st.integers(0, 2**31 - 1)),
        min_size=1,
        max_size=4,
    ),
    st.booleans(),
)
def test_pre_encoded_datums_with_weights_equal_the_full_encoding(
    items: list[tuple[T.Datum, int, int]], forward_only: bool
) -> None:
    """``encode_datum_prefixes`` + ``encode_weighted_request`` (``forward_backward_custom``'s
    route) write the same bytes as the full encoder given the equivalent datums (provenance
    spans included); loss inputs other than ``target_tokens`` are left out of the prefix."""
    full, sources, lengths, weights = [], [], [], []
    for source, n, seed in items:
        rng = np.random.default_rng(seed)
        targets = T.TensorData.from_numpy(rng.integers(0, 1 << 40, n).astype(np.int64))
        w = rng.normal(size=n).astype(np.float32)
        extra = T.TensorData.from_numpy(np.ones(n, np.float32))
        spans = {
            "model_input_spans": source.model_input_spans,
            "loss_fn_input_spans": source.loss_fn_input_spans,
        }
        with_extra = T.Datum(
            model_input=source.model_input,
            loss_fn_inputs={"target_tokens": targets, "advantages": extra, "weights": extra},
            **spans,
        )
        sources.append(with_extra)
        lengths.append(n)
        weights.append(w)
        full.append(
            T.Datum(
                model_input=source.model_input,
                loss_fn_inputs={"target_tokens": targets, "weights": T.TensorData.from_numpy(w)},
                **spans,
            )
        )
    chunk = WeightedChunk(encode_datum_prefixes(sources), lengths, np.concatenate(weights))
    fb_input = T.ForwardBackwardInput(data=full, loss_fn="cross_entropy")
    request: T.ForwardRequest | T.ForwardBackwardRequest = (
        T.ForwardRequest(forward_input=fb_input, model_id="m:1", seq_id=7)
        if forward_only
        else T.ForwardBackwardRequest(forward_backward_input=fb_input, model_id="m:1", seq_id=7)
    )
    encoded = encode_weighted_request(
        chunk, model_id="m:1", seq_id=7, loss_fn="cross_entropy", forward_only=forward_only
    )
    assert encoded == encode_forward_backward_request(request)
    assert decode_forward_backward_request(encoded) == request


def test_weighted_chunk_rejects_mismatched_weights() -> None:
    with pytest.raises(ValueError, match=r"shape \(5,\)"):
        WeightedChunk([(b"", b"")] * 2, [2, 3], np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="2 prefixes but 1 lengths"):
        WeightedChunk([(b"", b"")] * 2, [2], np.zeros(2, np.float32))


def test_pre_encoding_names_the_datum_with_an_out_of_range_token() -> None:
    ok = T.Datum(
        model_input=T.ModelInput.from_ints([1, 2]),
        loss_fn_inputs={"target_tokens": T.TensorData.from_numpy(np.array([2, 3]))},
    )
    bad = T.Datum(
        model_input=T.ModelInput.from_ints([5, 2**31]),
        loss_fn_inputs={"target_tokens": T.TensorData.from_numpy(np.array([2, 3]))},
    )
    with pytest.raises(TensorError, match="int32") as info:
        encode_datum_prefixes([ok, bad])
    assert info.value.field == "data[1].model_input[0].tokens"
