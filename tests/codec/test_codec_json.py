"""JSON codec: every wire type round-trips, and the encoding follows the SDK's conventions."""

from __future__ import annotations

import contextlib
import datetime as dt
import enum
import json
import math
import typing

import msgspec
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tinkjax.types as T
from tinkjax.codec import decode_json, encode_json, to_wire_builtins
from tinkjax.errors import DecodeError, WireFormatError

from . import strategies as S

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])

STRUCTS = S.wire_structs()


def test_every_struct_is_covered() -> None:
    # Guards the generic test below against silently losing types.
    assert len(STRUCTS) > 80
    assert {T.TensorData, T.Datum, T.SampleResponse, T.SessionFinishRequest} <= set(STRUCTS)


@pytest.mark.parametrize("cls", STRUCTS, ids=lambda c: c.__name__)
def test_json_round_trip_every_struct(cls: type[msgspec.Struct]) -> None:
    @SETTINGS
    @given(S.struct_strategy(cls))
    def check(obj: msgspec.Struct) -> None:
        data = encode_json(obj)
        assert decode_json(data, cls) == obj
        # Encoding is stable: a decoded value encodes to the same bytes.
        assert encode_json(decode_json(data, cls)) == data

    check()


@settings(max_examples=60, deadline=None)
@given(S.tensor())
def test_tensor_json_round_trip_is_exact(td: T.TensorData) -> None:
    back = decode_json(encode_json(td), T.TensorData)
    assert back == td
    assert back.data.dtype == td.data.dtype
    # Bit-exact, not just close: float32 values survive the trip through decimal text.
    assert back.data.tobytes() == td.data.tobytes()


@settings(max_examples=60, deadline=None)
@given(S.f32_array((7,)))
def test_float32_values_round_trip_exactly(values: np.ndarray) -> None:
    td = T.TensorData(data=values, dtype="float32")
    back = decode_json(encode_json(td), T.TensorData)
    assert back.data.view(np.uint32).tolist() == values.view(np.uint32).tolist()


@settings(max_examples=60, deadline=None)
@given(S.sample_response())
def test_sample_response_nan_prompt_logprobs_travel_as_null(resp: T.SampleResponse) -> None:
    body = json.loads(encode_json(resp))
    if resp.prompt_logprobs_np is None:
        assert "prompt_logprobs" not in body
        return
    assert body["prompt_logprobs"][0] is None
    assert [x is None for x in body["prompt_logprobs"]] == np.isnan(
        resp.prompt_logprobs_np
    ).tolist()
    back = decode_json(encode_json(resp), T.SampleResponse)
    assert back == resp
    assert back.prompt_logprobs == resp.prompt_logprobs
    assert back.prompt_logprobs is not None
    assert back.prompt_logprobs[0] is None


def test_none_fields_are_omitted_but_defaults_are_sent() -> None:
    req = T.SaveWeightsRequest(model_id="m", path=None, seq_id=3)
    assert json.loads(encode_json(req)) == {
        "model_id": "m",
        "seq_id": 3,
        "overwrite": False,
        "type": "save_weights",
    }


def test_session_finish_detail_is_sent_even_when_null() -> None:
    req = T.SessionFinishRequest(reason=T.SessionFinishReason(type="success"))
    assert json.loads(encode_json(req)) == {"reason": {"type": "success"}, "detail": None}
    assert decode_json(encode_json(req), T.SessionFinishRequest) == req


def test_tags_and_renamed_fields_are_on_the_wire() -> None:
    seq = T.SampledSequence(stop_reason="length", tokens_np=[5, 6], logprobs_np=[-1.0, -2.0])
    assert json.loads(encode_json(seq)) == {
        "stop_reason": "length",
        "tokens": [5, 6],
        "logprobs": [-1.0, -2.0],
    }
    chunk = T.EncodedTextChunk(tokens=[1, 2])
    assert json.loads(encode_json(chunk)) == {"type": "encoded_text", "tokens": [1, 2]}
    image = T.ImageChunk(data=b"\x89PNG", format="png")
    assert json.loads(encode_json(image)) == {"type": "image", "data": "iVBORw==", "format": "png"}
    assert decode_json(encode_json(image), T.ImageChunk) == image


def test_naive_datetimes_are_sent_as_utc() -> None:
    naive = dt.datetime(2024, 5, 6, 7, 8, 9, 123456)
    body = json.loads(encode_json(T.Cursor(offset=0, limit=1, total_count=2)))
    assert body == {"offset": 0, "limit": 1, "total_count": 2}
    event = T.SessionStartEvent(
        event_id="e", event_session_index=0, severity="INFO", timestamp=naive
    )
    back = decode_json(encode_json(event), T.SessionStartEvent)
    assert back.timestamp == naive.replace(tzinfo=dt.UTC)


def test_to_wire_builtins_converts_numpy_scalars_and_enums() -> None:
    assert to_wire_builtins(
        {"a": np.float32(1.5), "b": np.int64(3), "c": T.RequestErrorCategory.USER}
    ) == {
        "a": 1.5,
        "b": 3,
        "c": "user",
    }
    with pytest.raises(WireFormatError, match="cannot encode a value of type object"):
        to_wire_builtins(object())


# ``data`` is the flattened tensor on the wire (the SDK's ``TensorData.data``).
def test_tensor_json_data_is_flat() -> None:
    td = T.TensorData.from_numpy(np.arange(6, dtype=np.float32).reshape(2, 3))
    body = json.loads(encode_json(td))
    assert body == {"data": [0.0, 1.0, 2.0, 3.0, 4.0, 5.0], "dtype": "float32", "shape": [2, 3]}


def test_flat_tensor_json_with_shape_decodes_to_that_shape() -> None:
    td = decode_json(b'{"data":[1,2,3,4,5,6],"dtype":"int64","shape":[3,2]}', T.TensorData)
    assert td.data.shape == (3, 2)
    np.testing.assert_array_equal(td.to_numpy(), np.arange(1, 7).reshape(3, 2))


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b'{"data":[1,2,3],"dtype":"float32","shape":[2,2]}', "shape"),
        (b'{"data":[1,2,3],"dtype":"int8"}', "dtype"),
        (b'{"data":[1.5],"dtype":"int64"}', "data"),
        (b'{"data":["a"],"dtype":"int64"}', "data"),
        (
            b'{"data":[1,2],"dtype":"float32","shape":[2,2],"sparse_crow_indices":[0,1,2],'
            b'"sparse_col_indices":[0,5]}',
            "sparse_col_indices",
        ),
        (
            b'{"data":[1,2],"dtype":"float32","shape":[2,2],"sparse_crow_indices":[0,1],'
            b'"sparse_col_indices":[0,1]}',
            "sparse_crow_indices",
        ),
        (
            b'{"data":[1,2],"dtype":"float32","shape":[2,2],"sparse_crow_indices":[0,1,3],'
            b'"sparse_col_indices":[0,1]}',
            "sparse_crow_indices",
        ),
        (
            b'{"data":[1,2],"dtype":"float32","shape":[2,2],"sparse_crow_indices":[0,1,2]}',
            "sparse_col_indices",
        ),
        (
            b'{"data":[1,2],"dtype":"float32","shape":[2],"sparse_crow_indices":[0,1,2],'
            b'"sparse_col_indices":[0,1]}',
            "shape",
        ),
    ],
)
def test_bad_tensor_json_names_the_field(body: bytes, field: str) -> None:
    with pytest.raises(DecodeError) as info:
        decode_json(body, T.TensorData)
    assert info.value.field is not None
    assert field in info.value.field
    assert field in str(info.value)


@pytest.mark.parametrize(
    ("body", "tp", "path"),
    [
        (b'{"model_id": 3}', T.GetInfoRequest, "$.model_id"),
        (b'{"model_id": "m", "extra": 1}', T.GetInfoRequest, None),
        (
            b'{"sequences": [{"stop_reason": "maybe", "tokens": []}]}',
            T.SampleResponse,
            "$.sequences[0].stop_reason",
        ),
        (
            b'{"forward_backward_input": {"data": [{"model_input": {"chunks": [{"type": "nope"}]}}],'
            b' "loss_fn": "ppo"}, "model_id": "m"}',
            T.ForwardBackwardRequest,
            "$.forward_backward_input.data[0].model_input.chunks[0]",
        ),
    ],
)
def test_invalid_json_names_the_path(body: bytes, tp: type, path: str | None) -> None:
    with pytest.raises(DecodeError) as info:
        decode_json(body, tp)
    if path is not None:
        assert info.value.field is not None
        assert info.value.field.startswith(path)
        assert path in str(info.value)
    else:
        assert "extra" in str(info.value)


@pytest.mark.parametrize(
    "body", [b"", b"{", b'{"model_id": "m"', b"\xff\xfe", b'{"model_id": "m",}', b"nul"]
)
def test_malformed_json_is_a_decode_error(body: bytes) -> None:
    with pytest.raises(DecodeError, match="malformed JSON"):
        decode_json(body, T.GetInfoRequest)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_json_refuses_to_encode_non_finite_numbers(value: float) -> None:
    # JSON has no NaN or infinity; msgspec would write null, which reads as a missing value.
    with pytest.raises(WireFormatError, match=r"metrics\.a:mean: .*non-finite"):
        encode_json(T.OptimStepResponse(metrics={"a:mean": value}))
    with pytest.raises(WireFormatError, match=r"logprobs"):
        encode_json(T.SampledSequence(stop_reason="length", tokens_np=[1], logprobs_np=[value]))


def test_json_prompt_logprobs_send_nan_as_null_on_purpose() -> None:
    resp = T.SampleResponse(sequences=[], prompt_logprobs_np=[math.nan, -1.5])
    assert json.loads(encode_json(resp))["prompt_logprobs"] == [None, -1.5]
    with pytest.raises(WireFormatError, match="prompt_logprobs"):
        encode_json(T.SampleResponse(sequences=[], prompt_logprobs_np=[math.nan, math.inf]))


def test_json_null_for_a_float_is_named_non_finite_or_missing() -> None:
    body = b'{"model_id": "m", "seq_id": 1, "adam_params": {"learning_rate": null}}'
    with pytest.raises(DecodeError, match=r"learning_rate: expected a finite number, got null"):
        decode_json(body, T.OptimStepRequest)


@settings(max_examples=40, deadline=None)
@given(
    st.binary(max_size=64)
    | st.text(max_size=40).map(str.encode)
    | S.JSON_VALUE.map(lambda v: json.dumps(v).encode())
)
def test_fuzzed_json_raises_only_tinkjax_errors(body: bytes) -> None:
    for tp in (
        T.GetInfoRequest,
        T.Datum,
        T.ForwardBackwardRequest,
        T.CreateModelRequest,
        T.TensorData,
        T.SampleResponse,
        T.OptimStepRequest,
    ):
        with contextlib.suppress(DecodeError):
            decode_json(body, tp)


def _aliases() -> list[tuple[str, object]]:
    """Union, Literal, container aliases and enums exported from ``tinkjax.types``."""
    out = []
    for name in T.__all__:
        obj = getattr(T, name)
        if typing.get_origin(obj) is not None or (
            isinstance(obj, type) and issubclass(obj, enum.Enum)
        ):
            out.append((name, obj))
    return out


# ``OptimParams`` is a Python-side alias only: on the wire the key (``adam_params`` vs
# ``optimizer_params``) says which family, and ``AdamParams`` carries no tag, so the bare union
# is not decodable and never decoded.
ALIASES = [(n, a) for n, a in _aliases() if n != "OptimParams"]


def test_aliases_are_found() -> None:
    names = {n for n, _ in ALIASES}
    assert {
        "ModelInputChunk",
        "ProvenanceSpan",
        "OptimizerConfig",
        "TelemetryEvent",
        "LossFnType",
        "LossFnOutput",
        "RequestErrorCategory",
    } <= names


@pytest.mark.parametrize(("name", "alias"), ALIASES, ids=[n for n, _ in ALIASES])
def test_json_round_trip_every_alias(name: str, alias: object) -> None:
    @SETTINGS
    @given(S.for_type(alias))
    def check(value: object) -> None:
        assert decode_json(encode_json(value), alias) == value  # type: ignore[arg-type]

    check()
