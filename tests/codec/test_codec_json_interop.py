"""JSON request bodies equal what the official SDK 0.38.0 sends for the equivalent object.

The SDK sends ``model_dump(request, exclude_unset=False, exclude_none=True, mode="json")`` of its
pydantic request models (``tinker/resources/*.py``), except for two raw-dict bodies
(``/weights_info`` and ``/sessions/{id}/finish``), reproduced here as the SDK writes them.
For each tinkjax request value, the equivalent SDK object is built by validating our body with the
SDK's model (strict models reject unknown fields), and its dump must equal our body exactly.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tinker._compat import model_dump
from tinker.types._pydantic_types.forward_backward_input import (
    ForwardBackwardInput as PydForwardBackwardInput,
)

import tinkjax.types as T
from tinkjax.codec import encode_json

from . import strategies as S
from .official import tinker

SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _sdk_body(model: Any) -> Any:
    return model_dump(model, exclude_unset=False, exclude_none=True, mode="json")


def _pydantic(cls: Any) -> Callable[[dict[str, Any]], Any]:
    return lambda body: _sdk_body(cls.model_validate(body))


def _weights_info(body: dict[str, Any]) -> Any:
    # rest_client.get_weights_info_by_tinker_path: body={"tinker_path": tinker_path}
    return {"tinker_path": body["tinker_path"]}


def _session_finish(body: dict[str, Any]) -> Any:
    # service_client: body={"reason": {"type": status}, "detail": detail}
    return {"reason": {"type": body["reason"]["type"]}, "detail": body["detail"]}


def _json_era_forward(key: str) -> Callable[[dict[str, Any]], Any]:
    # JSON-era ``/forward_backward`` and ``/forward``: the SDK's pydantic ForwardBackwardInput
    # (its 0.38 request dataclasses are only ever sent as protobuf).
    def sdk(body: dict[str, Any]) -> Any:
        out = {
            key: _sdk_body(PydForwardBackwardInput.model_validate(body[key])),
            "model_id": body["model_id"],
        }
        if "seq_id" in body:
            out["seq_id"] = body["seq_id"]
        return out

    return sdk


tt = tinker.types
SDK_BODY: dict[type, Callable[[dict[str, Any]], Any]] = {
    T.ClientConfigRequest: _pydantic(tt.ClientConfigRequest),
    T.CopyWeightsRequest: _pydantic(tt.CopyWeightsRequest),
    T.CreateCustomLossRequest: _pydantic(tt.CreateCustomLossRequest),
    T.CreateModelRequest: _pydantic(tt.CreateModelRequest),
    T.CreateSamplingSessionRequest: _pydantic(tt.CreateSamplingSessionRequest),
    # ``user_metadata`` is required but nullable in the SDK's model; ``None`` is not sent.
    T.CreateSessionRequest: lambda body: _sdk_body(
        tt.CreateSessionRequest.model_validate({"user_metadata": None, **body})
    ),
    T.ForwardBackwardRequest: _json_era_forward("forward_backward_input"),
    T.ForwardRequest: _json_era_forward("forward_input"),
    T.FutureRetrieveRequest: _pydantic(tt.FutureRetrieveRequest),
    T.FuturesRetrieveRequest: _pydantic(tt.FuturesRetrieveRequest),
    T.GetInfoRequest: _pydantic(tt.GetInfoRequest),
    T.LoadWeightsRequest: _pydantic(tt.LoadWeightsRequest),
    T.OptimStepRequest: _pydantic(tt.OptimStepRequest),
    T.SampleRequest: _pydantic(tt.SampleRequest),
    T.SaveWeightsExternalRequest: _pydantic(tt.SaveWeightsExternalRequest),
    T.SaveWeightsForSamplerRequest: _pydantic(tt.SaveWeightsForSamplerRequest),
    T.SaveWeightsRequest: _pydantic(tt.SaveWeightsRequest),
    T.SessionFinishRequest: _session_finish,
    T.SessionHeartbeatRequest: _pydantic(tt.SessionHeartbeatRequest),
    T.TelemetrySendRequest: _pydantic(tt.TelemetrySendRequest),
    T.UnloadModelRequest: _pydantic(tt.UnloadModelRequest),
    T.WeightsInfoRequest: _weights_info,
}


def _request_types() -> set[type]:
    """Every tinkjax type whose name says it is a request body."""
    return {cls for cls in S.wire_structs() if cls.__name__.endswith("Request")}


def test_every_request_type_is_compared() -> None:
    assert _request_types() == set(SDK_BODY)


def _strategy(cls: type) -> st.SearchStrategy[Any]:
    if cls in (T.ForwardBackwardRequest, T.ForwardRequest):
        # JSON-era datums carry no provenance spans (the SDK's pydantic Datum has none).
        plain = S.datum().map(
            lambda d: T.replace(d, model_input_spans=None, loss_fn_input_spans=None)
        )
        fbi = st.builds(
            T.ForwardBackwardInput,
            data=st.lists(plain, max_size=3),
            loss_fn=S.LOSS_FN,
            loss_fn_config=st.none() | st.dictionaries(S.NAME, S.CONFIG_VALUE, max_size=3),
        )
        seq = st.none() | st.integers(0, 2**31 - 1)
        if cls is T.ForwardRequest:
            return st.builds(cls, forward_input=fbi, model_id=S.TEXT, seq_id=seq)
        return st.builds(cls, forward_backward_input=fbi, model_id=S.TEXT, seq_id=seq)
    return S.struct_strategy(cls)


def _name(cls: type) -> str:
    return cls.__name__


REQUEST_TYPES: list[type] = sorted(SDK_BODY, key=_name)


@pytest.mark.parametrize("cls", REQUEST_TYPES, ids=_name)
def test_json_body_equals_the_official_sdk_body(cls: type[msgspec.Struct]) -> None:
    sdk = SDK_BODY[cls]

    @SETTINGS
    @given(_strategy(cls))
    def check(obj: msgspec.Struct) -> None:
        ours = json.loads(encode_json(obj))
        assert sdk(ours) == ours

    check()


def test_official_sdk_objects_built_directly_match() -> None:
    """Objects built with the SDK's constructors (not from our JSON) give our exact bytes."""
    cases: list[tuple[Any, Any]] = [
        (
            tt.CreateModelRequest(
                session_id="s", model_seq_id=0, base_model="m", lora_config=tt.LoraConfig(rank=8)
            ),
            T.CreateModelRequest(
                session_id="s", model_seq_id=0, base_model="m", lora_config=T.LoraConfig(rank=8)
            ),
        ),
        (
            tt.OptimStepRequest(
                model_id="s:train:0",
                seq_id=3,
                adam_params=tt.AdamParams(learning_rate=1e-3, eps=1e-8),
            ),
            T.OptimStepRequest(
                model_id="s:train:0",
                seq_id=3,
                adam_params=T.AdamParams(learning_rate=1e-3, eps=1e-8),
            ),
        ),
        (
            tt.SampleRequest(
                prompt=tt.ModelInput.from_ints([1, 2, 3]),
                sampling_params=tt.SamplingParams(max_tokens=4, stop=[5, 6]),
                sampling_session_id="s:sample:0",
                seq_id=0,
                prompt_logprobs=True,
            ),
            T.SampleRequest(
                prompt=T.ModelInput.from_ints([1, 2, 3]),
                sampling_params=T.SamplingParams(max_tokens=4, stop=[5, 6]),
                sampling_session_id="s:sample:0",
                seq_id=0,
                prompt_logprobs=True,
            ),
        ),
        (
            tt.CreateSessionRequest(tags=["a"], user_metadata={}, sdk_version="0.38.0"),
            T.CreateSessionRequest(tags=["a"], user_metadata={}, sdk_version="0.38.0"),
        ),
    ]
    for sdk_obj, ours in cases:
        assert _sdk_body(sdk_obj) == json.loads(encode_json(ours)), type(ours).__name__
