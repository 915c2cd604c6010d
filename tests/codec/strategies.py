"""Hypothesis strategies for every wire type in ``tinkjax.types``.

Structs are built generically from their field annotations (``msgspec.structs.fields``); the
types that hold NumPy arrays get hand-written strategies that respect their invariants.
The ``proto_*`` strategies stay inside what the protobuf wire can represent (int32 tokens,
shapes always written for outputs, non-empty config maps, ...).
"""

from __future__ import annotations

import datetime as dt
import enum
import types as pytypes
import typing
from typing import Any

import msgspec
import numpy as np
from hypothesis import strategies as st

import tinkjax.types as T

INT64 = st.integers(-(2**63), 2**63 - 1)
INT32 = st.integers(-(2**31), 2**31 - 1)
FINITE = st.floats(allow_nan=False, allow_infinity=False)
F32 = st.floats(width=32, allow_nan=False, allow_infinity=False)
# JSON has no NaN or infinities: only prompt logprobs send NaN (as null, "not computed").
NAME = st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=10)
TEXT = st.text(max_size=8)

JSON_VALUE = st.recursive(
    st.none() | st.booleans() | INT64 | FINITE | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=6,
)


# -- arrays and tensors -----------------------------------------------------------------------
def f32_array(shape: tuple[int, ...]) -> st.SearchStrategy[np.ndarray]:
    size = int(np.prod(shape)) if shape else 1
    return st.lists(F32, min_size=size, max_size=size).map(
        lambda xs: np.asarray(xs, dtype=np.float32).reshape(shape)
    )


def i64_array(
    shape: tuple[int, ...], elems: st.SearchStrategy[int] = INT64
) -> st.SearchStrategy[np.ndarray]:
    size = int(np.prod(shape)) if shape else 1
    return st.lists(elems, min_size=size, max_size=size).map(
        lambda xs: np.asarray(xs, dtype=np.int64).reshape(shape)
    )


def _array(dtype: str, shape: tuple[int, ...]) -> st.SearchStrategy[np.ndarray]:
    return f32_array(shape) if dtype == "float32" else i64_array(shape)


@st.composite
def dense_tensor(
    draw: st.DrawFn, *, dtype: str | None = None, ndim: int | None = None, shape_none: bool = True
) -> T.TensorData:
    """A dense 1-D or 2-D float32/int64 tensor (1-D sometimes without a shape)."""
    dtype = dtype or draw(st.sampled_from(["float32", "int64"]))
    ndim = ndim or draw(st.sampled_from([1, 2]))
    shape = tuple(draw(st.lists(st.integers(0, 5), min_size=ndim, max_size=ndim)))
    arr = draw(_array(dtype, shape))
    if ndim == 1 and shape_none and draw(st.booleans()):
        return T.TensorData(data=arr, dtype=dtype)  # type: ignore[arg-type]
    return T.TensorData(data=arr, dtype=dtype, shape=list(shape))  # type: ignore[arg-type]


@st.composite
def csr_tensor(draw: st.DrawFn, *, dtype: str | None = None) -> T.TensorData:
    """A CSR tensor with a random sparsity pattern (indices sorted within each row)."""
    dtype = dtype or draw(st.sampled_from(["float32", "int64"]))
    rows, cols = draw(st.integers(0, 5)), draw(st.integers(1, 5))
    mask = np.asarray(
        draw(st.lists(st.booleans(), min_size=rows * cols, max_size=rows * cols)), dtype=bool
    ).reshape(rows, cols)
    r_idx, c_idx = np.nonzero(mask)
    values = draw(_array(dtype, (len(r_idx),)))
    crow = np.concatenate([[0], np.cumsum(mask.sum(axis=1))]).astype(np.int64)
    return T.TensorData(
        data=values,
        dtype=dtype,  # type: ignore[arg-type]
        shape=[rows, cols],
        sparse_crow_indices=crow.tolist(),
        sparse_col_indices=c_idx.tolist(),
    )


def tensor(dtype: str | None = None) -> st.SearchStrategy[T.TensorData]:
    return dense_tensor(dtype=dtype) | csr_tensor(dtype=dtype)


# -- model input ------------------------------------------------------------------------------
def text_chunk(elems: st.SearchStrategy[int] = INT64) -> st.SearchStrategy[T.EncodedTextChunk]:
    return st.lists(elems, max_size=6).map(
        lambda xs: T.EncodedTextChunk(tokens=np.asarray(xs, dtype=np.int64))
    )


IMAGE_CHUNK = st.builds(
    T.ImageChunk,
    data=st.binary(max_size=12),
    format=st.sampled_from(["png", "jpeg"]),
    expected_tokens=st.none() | st.integers(0, 2**31 - 1),
)
DMEL_CHUNK = st.builds(T.DmelChunk, dmel=st.binary(max_size=12))
POINTER_CHUNK = st.builds(
    T.ImageAssetPointerChunk,
    format=st.sampled_from(["png", "jpeg"]),
    location=TEXT,
    expected_tokens=st.none() | st.integers(0, 1000),
)


def model_input(*, proto: bool = False) -> st.SearchStrategy[T.ModelInput]:
    chunk = (
        text_chunk(INT32) | IMAGE_CHUNK | DMEL_CHUNK
        if proto
        else text_chunk() | IMAGE_CHUNK | DMEL_CHUNK | POINTER_CHUNK
    )
    return st.lists(chunk, max_size=3).map(lambda cs: T.ModelInput(chunks=cs))


SPAN: st.SearchStrategy[T.ProvenanceSpan] = st.one_of(
    [
        st.builds(cls, sequence_id=NAME, offset=st.integers(0, 2**40), length=st.integers(0, 2**40))
        for cls in (T.PromptProvenanceSpan, T.SampledProvenanceSpan)
    ]
)


@st.composite
def datum(draw: st.DrawFn, *, proto: bool = False) -> T.Datum:
    """A datum; in protobuf mode span lists are either absent or both non-empty."""
    inputs = draw(st.dictionaries(NAME, tensor(), max_size=3))
    spans = draw(st.booleans())
    min_spans = 1 if proto else 0
    return T.Datum(
        model_input=draw(model_input(proto=proto)),
        loss_fn_inputs=inputs,
        model_input_spans=draw(st.lists(SPAN, min_size=min_spans, max_size=3)) if spans else None,
        loss_fn_input_spans=draw(st.lists(SPAN, min_size=min_spans, max_size=3)) if spans else None,
    )


LOSS_FN = st.sampled_from(typing.get_args(T.LossFnType))
CONFIG_VALUE = FINITE | TEXT


@st.composite
def forward_backward_input(draw: st.DrawFn, *, proto: bool = False) -> T.ForwardBackwardInput:
    config = draw(
        st.none() | st.dictionaries(NAME, CONFIG_VALUE, min_size=1 if proto else 0, max_size=3)
    )
    return T.ForwardBackwardInput(
        data=draw(st.lists(datum(proto=proto), max_size=3)),
        loss_fn=draw(LOSS_FN),
        loss_fn_config=config,
    )


@st.composite
def fwd_request(
    draw: st.DrawFn, *, proto: bool = False
) -> T.ForwardBackwardRequest | T.ForwardRequest:
    """A ForwardBackwardRequest or a ForwardRequest (``seq_id`` always set in protobuf mode)."""
    seq_id = draw(st.integers(0, 2**31 - 1) if proto else st.none() | st.integers(0, 2**31 - 1))
    fb_input = draw(forward_backward_input(proto=proto))
    model_id = draw(TEXT)
    if draw(st.booleans()):
        return T.ForwardRequest(forward_input=fb_input, model_id=model_id, seq_id=seq_id)
    return T.ForwardBackwardRequest(
        forward_backward_input=fb_input, model_id=model_id, seq_id=seq_id
    )


# -- outputs ----------------------------------------------------------------------------------
@st.composite
def forward_backward_output(draw: st.DrawFn) -> T.ForwardBackwardOutput:
    """Per-datum dense outputs with one key set; trailing shapes vary between runs of datums
    (ragged K), and every tensor carries its shape, as decoded outputs always do."""
    names = draw(st.lists(NAME, min_size=1, max_size=3, unique=True))
    specs = {
        n: (draw(st.sampled_from(["float32", "int64"])), draw(st.integers(1, 2))) for n in names
    }
    outputs = []
    for _ in range(draw(st.integers(0, 4))):
        n_rows = draw(st.integers(0, 4))
        out = {}
        for name, (dtype, ndim) in specs.items():
            shape = (n_rows,) if ndim == 1 else (n_rows, draw(st.integers(1, 3)))
            out[name] = T.TensorData(
                data=draw(_array(dtype, shape)), dtype=dtype, shape=list(shape)
            )  # type: ignore[arg-type]
        outputs.append(out)
    return T.ForwardBackwardOutput(
        loss_fn_output_type=draw(st.sampled_from(["ArrayRecord", "TorchLossReturn"])),
        loss_fn_outputs=outputs,
        metrics=draw(st.dictionaries(NAME.map(lambda s: s + ":sum"), FINITE, max_size=3)),
    )


@st.composite
def topk(draw: st.DrawFn, *, min_size: int = 0) -> T.TopkLogprobs:
    length, k = draw(st.integers(min_size, 4)), draw(st.integers(min_size, 3))
    return T.TopkLogprobs(
        token_ids=draw(i64_array((length, k), INT32)).astype(np.int32),
        logprobs=draw(f32_array((length, k))),
        k=k,
        length=length,
    )


@st.composite
def sampled_sequence(draw: st.DrawFn, *, proto: bool = False) -> T.SampledSequence:
    n = draw(st.integers(0, 6))
    return T.SampledSequence(
        stop_reason=draw(st.sampled_from(["stop", "length"])),
        tokens_np=draw(i64_array((n,), INT32)).astype(np.int32),
        logprobs_np=draw(st.none() | f32_array((n,))),
        sequence_id=None if proto else draw(st.none() | NAME),
        topk_logprobs_np=draw(st.none() | topk(min_size=1 if proto else 0)),
    )


@st.composite
def sample_response(draw: st.DrawFn, *, proto: bool = False) -> T.SampleResponse:
    """A sample response; prompt logprobs start with NaN (not computed at position 0)."""
    prompt_len = draw(st.integers(1, 6))
    prompt = draw(st.none() | f32_array((prompt_len - 1,)))
    alt = None
    if draw(st.booleans()):
        k = draw(st.integers(1, 3))
        alt = T.PromptAltTokens(
            tokens=T.TensorData(
                data=draw(i64_array((prompt_len - 1, k))), dtype="int64", shape=[prompt_len - 1, k]
            ),
            logprobs=T.TensorData(
                data=draw(f32_array((prompt_len - 1, k))),
                dtype="float32",
                shape=[prompt_len - 1, k],
            ),
        )
    return T.SampleResponse(
        sequences=draw(st.lists(sampled_sequence(proto=proto), max_size=3)),
        prompt_logprobs_np=None
        if prompt is None
        else np.concatenate([[np.nan], prompt]).astype(np.float32),
        topk_prompt_logprobs_np=draw(st.none() | topk(min_size=1 if proto else 0)),
        # protobuf responses always write a shape (decoded tensors carry one)
        target_prompt_logprobs=draw(
            st.none()
            | (
                dense_tensor(dtype="float32", shape_none=False) | csr_tensor(dtype="float32")
                if proto
                else tensor("float32")
            )
        ),
        prompt_cache_hit_tokens=draw(st.integers(0, 2**31 - 1)),
        prompt_alt_tokens=alt,
    )


SAMPLING_PARAMS = st.builds(
    T.SamplingParams,
    max_tokens=st.none() | st.integers(0, 2**31 - 1),
    seed=st.none() | INT64,
    stop=st.none() | TEXT | st.lists(TEXT, max_size=3) | st.lists(INT64, max_size=3),
    temperature=FINITE,
    top_k=INT64,
    top_p=FINITE,
)


OPTIM_STEP = st.builds(
    T.OptimStepRequest,
    model_id=TEXT,
    seq_id=st.none() | st.integers(0, 2**31 - 1),
    adam_params=st.deferred(lambda: struct_strategy(T.AdamParams)),
).flatmap(
    lambda r: (
        st.just(r)
        | st.deferred(lambda: struct_strategy(T.DimuonParams)).map(
            lambda p: T.OptimStepRequest(model_id=r.model_id, seq_id=r.seq_id, optimizer_params=p)
        )
    )
)


# -- generic structs --------------------------------------------------------------------------
OVERRIDES: dict[type, st.SearchStrategy[Any]] = {
    T.TensorData: tensor(),
    T.EncodedTextChunk: text_chunk(),
    T.TopkLogprobs: topk(),
    T.SampledSequence: sampled_sequence(),
    T.SampleResponse: sample_response(),
    T.Datum: datum(),
    T.ForwardBackwardOutput: forward_backward_output(),
    T.SamplingParams: SAMPLING_PARAMS,
    T.OptimStepRequest: OPTIM_STEP,
}


def for_type(tp: Any) -> st.SearchStrategy[Any]:
    """A strategy for any annotation used by the wire types."""
    if isinstance(tp, type) and tp in OVERRIDES:
        return OVERRIDES[tp]
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        return st.deferred(lambda: struct_strategy(tp))
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return JSON_VALUE
    if tp is type(None) or tp is None:
        return st.none()
    if origin in (typing.Union, pytypes.UnionType):
        return st.one_of([for_type(a) for a in args])
    if origin is typing.Literal:
        return st.sampled_from(args)
    if origin is list:
        return st.lists(for_type(args[0]), max_size=3)
    if origin is dict:
        return st.dictionaries(for_type(args[0]), for_type(args[1]), max_size=3)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return st.sampled_from(list(tp))
    simple: dict[Any, st.SearchStrategy[Any]] = {
        str: TEXT,
        bool: st.booleans(),
        int: INT64,
        float: FINITE,
        bytes: st.binary(max_size=12),
        dt.datetime: st.datetimes(timezones=st.just(dt.UTC)),
    }
    if tp in simple:
        return simple[tp]
    raise NotImplementedError(f"no strategy for {tp!r}")


def struct_strategy(cls: type[msgspec.Struct]) -> st.SearchStrategy[Any]:
    """Build ``cls`` from strategies of its fields (optional fields sometimes left default)."""
    if cls in OVERRIDES:
        return OVERRIDES[cls]
    kwargs: dict[str, st.SearchStrategy[Any]] = {}
    for f in msgspec.structs.fields(cls):
        kwargs[f.name] = for_type(f.type)
    return st.builds(cls, **kwargs)


def wire_structs() -> list[type[msgspec.Struct]]:
    """Every Struct class exported from ``tinkjax.types``."""
    return [
        obj
        for name in T.__all__
        if isinstance(obj := getattr(T, name), type) and issubclass(obj, msgspec.Struct)
    ]
