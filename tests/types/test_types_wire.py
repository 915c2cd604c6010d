"""Wire types: the public surface, immutability, the helpers, and the official SDK's rules."""

from __future__ import annotations

import inspect
import typing

import jax.numpy as jnp
import msgspec
import numpy as np
import pytest

import tinkjax.types as T
from tinkjax.codec import decode_json
from tinkjax.errors import DecodeError, TensorError, WireFormatError

STRUCTS = [
    obj
    for name in T.__all__
    if isinstance(obj := getattr(T, name), type) and issubclass(obj, msgspec.Struct)
]
# Names in ``__all__`` that are not Structs: aliases, constants and helpers, listed so that a
# new export must be classified (and, if it is a wire type, get a round-trip strategy).
NON_STRUCT_EXPORTS = {
    "LOSS_INPUT_DTYPES",
    # aliases the official SDK exports (tinkjax/types/_aliases.py)
    "LossFnInputs",
    "ModelID",
    "ProvenanceSpans",
    "RequestID",
    "SamplingClientKind",
    "CheckpointType",
    "CustomLossInputRank",
    "CustomLossNodeOp",
    "EventType",
    "LossFnOutput",
    "LossFnType",
    "ModelInputChunk",
    "OptimParams",
    "OptimizerConfig",
    "ProvenanceSpan",
    "QueueState",
    "RequestErrorCategory",
    "Severity",
    "StopReason",
    "TelemetryEvent",
    "TensorDtype",
    "check_resource_id",
    "coerce_loss_input",
    "numpy_dtype",
    "parse_tinker_path",
    "replace",
}


def isort_key(name: str) -> tuple[int, str]:
    """Ruff's RUF022 order: CONSTANTS, then Classes, then functions."""
    return (0 if name.isupper() else 1 if name[:1].isupper() else 2, name)


def test_all_is_sorted_and_complete() -> None:
    assert T.__all__ == sorted(T.__all__, key=isort_key)
    assert len(set(T.__all__)) == len(T.__all__)
    # Everything else is a wire Struct (``TelemetryBatch`` is the SDK's alias of a request).
    names = {n for n in T.__all__ if n not in NON_STRUCT_EXPORTS}
    assert names == {n for n in T.__all__ if getattr(T, n) in STRUCTS}
    assert T.TelemetryBatch is T.TelemetrySendRequest
    assert set(T.__all__) >= NON_STRUCT_EXPORTS
    # Every public class defined in the private modules is exported.
    defined = {
        name
        for name, obj in vars(T).items()
        if inspect.ismodule(obj)
        for name, cls in vars(obj).items()
        if isinstance(cls, type)
        and issubclass(cls, msgspec.Struct)
        and not name.startswith("_")
        and cls.__module__.startswith("tinkjax.types")
    }
    assert defined <= set(T.__all__) | {"Wire", "StrictWire"}


@pytest.mark.parametrize("cls", STRUCTS, ids=lambda c: c.__name__)
def test_structs_are_frozen_and_keyword_only(cls: type[msgspec.Struct]) -> None:
    assert cls.__struct_config__.frozen
    params = inspect.signature(cls).parameters.values()
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params)


def test_requests_reject_unknown_fields_and_responses_ignore_them() -> None:
    with pytest.raises(DecodeError, match="extra"):
        decode_json(b'{"model_id": "m", "extra": 1}', T.GetInfoRequest)
    got = decode_json(b'{"model_id": "m", "model_data": {}, "new_field": 1}', T.GetInfoResponse)
    assert got.model_id == "m"
    for cls in STRUCTS:
        if cls.__name__.endswith("Request"):
            assert cls.__struct_config__.forbid_unknown_fields, cls.__name__


def test_official_defaults() -> None:
    adam = T.AdamParams()
    assert (
        adam.learning_rate,
        adam.beta1,
        adam.beta2,
        adam.eps,
        adam.weight_decay,
        adam.grad_clip_norm,
    ) == (1e-4, 0.9, 0.95, 1e-12, 0.0, 0.0)
    sp = T.SamplingParams()
    assert (sp.max_tokens, sp.seed, sp.stop, sp.temperature, sp.top_k, sp.top_p) == (
        None,
        None,
        None,
        1.0,
        -1,
        1.0,
    )
    lora = T.LoraConfig(rank=32)
    assert (lora.seed, lora.train_unembed, lora.train_mlp, lora.train_attn) == (
        None,
        True,
        True,
        True,
    )
    assert T.ClientConfigResponse() == decode_json(b"{}", T.ClientConfigResponse)
    assert typing.get_args(T.LossFnType) == (
        "cross_entropy",
        "importance_sampling",
        "ppo",
        "cispo",
        "dro",
        "gspo",
        "stable_reinforce",
        "custom",
    )
    assert T.OptimStepRequest(model_id="m").optim_params == T.AdamParams()


def test_optim_step_takes_one_family() -> None:
    with pytest.raises(WireFormatError) as info:
        T.OptimStepRequest(
            model_id="m",
            adam_params=T.AdamParams(),
            optimizer_params=T.DimuonParams(learning_rate=1.0),
        )
    assert info.value.field == "optimizer_params"
    dimuon = T.OptimStepRequest(model_id="m", optimizer_params=T.DimuonParams(learning_rate=1.0))
    assert dimuon.adam_params is None
    assert dimuon.optim_params.learning_rate == 1.0


# -- ModelInput -------------------------------------------------------------------------------
def test_model_input_helpers() -> None:
    mi = T.ModelInput.from_ints([1, 2, 3])
    assert mi.to_ints() == [1, 2, 3]
    assert mi.length == 3
    mi2 = mi.append(T.ImageChunk(data=b"x", format="png", expected_tokens=5)).append_int(9)
    assert mi2.length == 3 + 5 + 1
    assert [type(c).__name__ for c in mi2.chunks] == [
        "EncodedTextChunk",
        "ImageChunk",
        "EncodedTextChunk",
    ]
    assert mi.append_int(4).to_ints() == [1, 2, 3, 4]
    assert len(mi.append_int(4).chunks) == 1
    assert mi.to_ints() == [1, 2, 3]  # immutable: helpers return new inputs
    assert T.ModelInput.empty().length == 0
    assert T.ModelInput.empty().to_ints() == []
    assert T.ModelInput.from_ints(iter([7, 8])).to_ints() == [7, 8]
    with pytest.raises(ValueError, match="chunks\\[1\\]"):
        mi2.to_ints()
    with pytest.raises(ValueError, match="expected_tokens"):
        _ = T.ImageChunk(data=b"x", format="png").length
    tokens = mi.chunks[0].tokens  # type: ignore[union-attr]
    assert tokens.dtype == np.int64
    assert not tokens.flags.writeable


def test_text_chunk_rejects_non_integer_tokens() -> None:
    for bad in ([1.5], [[1, 2]], ["a"]):
        with pytest.raises(TensorError) as info:
            T.EncodedTextChunk(tokens=bad)
        assert info.value.field == "tokens"


# -- TensorData -------------------------------------------------------------------------------
def test_tensor_numpy_and_jax_conversions() -> None:
    arr = np.arange(6, dtype=np.float64).reshape(2, 3)
    td = T.TensorData.from_numpy(arr)
    assert (td.dtype, td.shape) == ("float32", [2, 3])
    np.testing.assert_array_equal(td.to_numpy(), arr.astype(np.float32))
    np.testing.assert_array_equal(np.asarray(td.to_jax()), arr.astype(np.float32))
    assert td.tolist() == arr.tolist()
    ints = T.TensorData.from_jax(jnp.arange(4, dtype=jnp.int32))
    assert ints.dtype == "int64"
    assert ints.data.dtype == np.int64
    assert ints.shape == [4]
    bf = T.TensorData.from_jax(jnp.array([1.5, -2.0], dtype=jnp.bfloat16))
    assert bf.dtype == "float32"
    assert bf.data.tolist() == [1.5, -2.0]
    assert not td.data.flags.writeable
    src = np.ones(3, np.float32)
    td2 = T.TensorData(data=src, dtype="float32")
    src[0] = 5.0  # the tensor owns its values
    assert td2.data.tolist() == [1.0, 1.0, 1.0]


def test_csr_rule_and_round_trip() -> None:
    dense = np.array([[0, 3, 0, 0], [0, 0, 0, 0], [1, 0, 0, 2]], dtype=np.int64)
    td = T.TensorData.from_numpy_sparse(dense)
    assert td.is_sparse  # (3 + 1) + 2 * 3 = 10 < 12
    assert (td.sparse_crow_indices, td.sparse_col_indices) == ([0, 1, 1, 3], [1, 0, 3])
    assert td.data.tolist() == [3, 1, 2]
    assert td.dense_shape == (3, 4)
    np.testing.assert_array_equal(td.to_numpy(), dense)
    padded = T.TensorData.from_numpy_sparse(np.where(dense == 0, -1, dense), pad_value=-1)
    np.testing.assert_array_equal(padded.to_numpy(pad_value=-1), np.where(dense == 0, -1, dense))
    # Not smaller as CSR → dense, as the SDK decides.
    full = np.array([[1, 0], [0, 2]], np.float32)  # (2 + 1) + 2 * 2 = 7 >= 4
    assert not T.TensorData.from_numpy_sparse(full).is_sparse
    with pytest.raises(TypeError, match="pad_value"):
        td.to_numpy(pad_value=0.5)  # type: ignore[arg-type]


def test_tensor_equality_is_by_value() -> None:
    a = T.TensorData(data=[1.0, float("nan")], dtype="float32")
    assert a == T.TensorData(data=np.array([1.0, np.nan], np.float32), dtype="float32")
    assert a != T.TensorData(data=[1.0, 2.0], dtype="float32")
    assert a != T.TensorData(data=[1.0, float("nan")], dtype="float32", shape=[2])


# -- Datum ------------------------------------------------------------------------------------
def test_datum_coerces_raw_values() -> None:
    d = T.Datum(
        model_input=T.ModelInput.from_ints([1, 2]),
        loss_fn_inputs={  # raw values are coerced, as in the SDK
            "target_tokens": [3, 4],  # type: ignore[dict-item]
            "weights": np.array([1, 0]),  # type: ignore[dict-item]
            "advantages": jnp.array([0.5, 0.25]),  # type: ignore[dict-item]
        },
    )
    assert {k: v.dtype for k, v in d.loss_fn_inputs.items()} == {
        "target_tokens": "int64",
        "weights": "int64",
        "advantages": "float32",
    }
    with pytest.raises(ValueError, match="pair"):
        T.Datum(
            model_input=T.ModelInput.empty(),
            model_input_spans=[T.PromptProvenanceSpan(sequence_id="s", offset=0, length=0)],
        )
    with pytest.raises(ValueError, match="tile"):
        d.with_provenance(
            [T.PromptProvenanceSpan(sequence_id="s", offset=0, length=1)],
            [T.SampledProvenanceSpan(sequence_id="s", offset=0, length=2)],
        )


# -- tinker:// paths --------------------------------------------------------------------------
def test_parse_tinker_path() -> None:
    p = T.parse_tinker_path("tinker://abc:train:0/sampler_weights/000040")
    assert (p.training_run_id, p.checkpoint_type, p.checkpoint_id, p.kind, p.name) == (
        "abc:train:0",
        "sampler",
        "sampler_weights/000040",
        "sampler_weights",
        "000040",
    )
    assert T.parse_tinker_path("tinker://r/weights/final").checkpoint_type == "training"
    assert T.parse_tinker_path("tinker://r/external_weights/x").checkpoint_type == "external"
    for bad in (
        "http://r/weights/x",
        "tinker://r/weights",
        "tinker://r/weights/x/y",
        "tinker://r//x",
        "tinker://r/bogus/x",
        "tinker://../weights/y",
        "tinker://./weights/y",
        "tinker://r/weights/..",
        "tinker://r/weights/x?y",
        "tinker://r/weights/x#y",
        "tinker://r%2F../weights/x",
        "tinker://r r/weights/x",
    ):
        with pytest.raises(WireFormatError) as info:
            T.parse_tinker_path(bad)
        assert info.value.field == "tinker_path"
        assert repr(bad) in str(info.value)


def test_sample_response_views() -> None:
    seq = T.SampledSequence(stop_reason="stop", tokens_np=[1, 2], logprobs_np=[-0.5, -1.5])
    assert seq.tokens == [1, 2]
    assert seq.logprobs == [-0.5, -1.5]
    assert seq.tokens_np.dtype == np.int32
    assert seq.logprobs_np.dtype == np.float32
    resp = T.SampleResponse(sequences=[seq], prompt_logprobs_np=[None, -1.0])
    assert resp.prompt_logprobs == [None, -1.0]
    topk = T.TopkLogprobs(token_ids=[1, 2, 3, 4], logprobs=[0.0] * 4, k=2, length=2)
    assert topk.token_ids.shape == (2, 2)
