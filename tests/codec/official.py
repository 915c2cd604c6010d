"""Bridges between tinkjax wire values and the official ``tinker`` SDK 0.38.0 (the oracle).

``to_official_*`` build the SDK's own objects from tinkjax values; ``official_*_to_tinkjax``
turn what the SDK decodes back into tinkjax values, so results compare with ``==``. The
``build_*_pb`` functions write response messages with the SDK's generated protobuf module
(``tinker.proto.tinker_public_pb2``), independently of tinkjax's writer, as the service would.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import tinkjax.types as T

tinker = pytest.importorskip("tinker")

from tinker.proto import request_conv, response_conv  # noqa: E402
from tinker.proto import tinker_public_pb2 as opb  # noqa: E402
from tinker.types import provenance_spans as ospans  # noqa: E402


# -- requests: tinkjax → official objects -------------------------------------------------------
def to_official_tensor(td: T.TensorData) -> Any:
    return tinker.TensorData(
        data=np.array(td.data, copy=True).reshape(-1) if td.is_sparse else np.array(td.data),
        dtype=td.dtype,
        shape=None if td.shape is None else list(td.shape),
        sparse_crow_indices=td.sparse_crow_indices,
        sparse_col_indices=td.sparse_col_indices,
    )


def to_official_chunk(chunk: T.ModelInputChunk) -> Any:
    if isinstance(chunk, T.EncodedTextChunk):
        return tinker.types.EncodedTextChunk(tokens=chunk.tokens.tolist())
    if isinstance(chunk, T.ImageChunk):
        return tinker.types.ImageChunk(
            data=chunk.data, format=chunk.format, expected_tokens=chunk.expected_tokens
        )
    if isinstance(chunk, T.DmelChunk):
        return tinker.types.DmelChunk(dmel=chunk.dmel)
    raise TypeError(type(chunk).__name__)


def to_official_span(span: T.ProvenanceSpan) -> Any:
    cls = (
        ospans.SampledProvenanceSpan
        if isinstance(span, T.SampledProvenanceSpan)
        else ospans.PromptProvenanceSpan
    )
    return cls(sequence_id=span.sequence_id, offset=span.offset, length=span.length)


def to_official_datum(d: T.Datum) -> Any:
    return tinker.Datum(
        model_input=tinker.ModelInput(chunks=[to_official_chunk(c) for c in d.model_input.chunks]),
        loss_fn_inputs={k: to_official_tensor(v) for k, v in d.loss_fn_inputs.items()},
        model_input_spans=None
        if d.model_input_spans is None
        else [to_official_span(s) for s in d.model_input_spans],
        loss_fn_input_spans=None
        if d.loss_fn_input_spans is None
        else [to_official_span(s) for s in d.loss_fn_input_spans],
    )


def fb_input_of(req: T.ForwardBackwardRequest | T.ForwardRequest) -> T.ForwardBackwardInput:
    return req.forward_input if isinstance(req, T.ForwardRequest) else req.forward_backward_input


def official_request_proto(req: T.ForwardBackwardRequest | T.ForwardRequest) -> Any:
    """The message the official SDK sends for ``req`` (as ``resources/training.py`` builds it)."""
    fbi = fb_input_of(req)
    official = tinker.types.ForwardBackwardRequest(
        forward_backward_input=tinker.types.ForwardBackwardInput(
            data=[to_official_datum(d) for d in fbi.data],
            loss_fn=fbi.loss_fn,
            loss_fn_config=fbi.loss_fn_config,
        ),
        model_id=req.model_id,
        seq_id=req.seq_id,
    )
    msg = request_conv.forward_backward_request_to_proto(official)
    msg.forward_only = isinstance(req, T.ForwardRequest)
    return msg


# -- responses: official decoded objects → tinkjax -----------------------------------------------
def official_tensor_to_tinkjax(td: Any) -> T.TensorData:
    return T.TensorData(
        data=td._numpy,
        dtype=td.dtype,
        shape=td.shape if td.shape else None,
        sparse_crow_indices=td.sparse_crow_indices,
        sparse_col_indices=td.sparse_col_indices,
    )


def official_output_to_tinkjax(out: Any) -> T.ForwardBackwardOutput:
    return T.ForwardBackwardOutput(
        loss_fn_output_type=out.loss_fn_output_type,
        loss_fn_outputs=[
            {k: official_tensor_to_tinkjax(v) for k, v in o.items()} for o in out.loss_fn_outputs
        ],
        metrics=dict(out.metrics),
    )


def _official_topk(tk: Any) -> T.TopkLogprobs | None:
    if tk is None:
        return None
    n, k = tk.token_ids.shape
    return T.TopkLogprobs(token_ids=tk.token_ids, logprobs=tk.logprobs, k=k, length=n)


def official_sample_to_tinkjax(resp: Any) -> T.SampleResponse:
    alt = resp.prompt_alt_tokens
    return T.SampleResponse(
        sequences=[
            T.SampledSequence(
                stop_reason=s.stop_reason,
                tokens_np=s.tokens_np,
                logprobs_np=s.logprobs_np,
                topk_logprobs_np=_official_topk(s.topk_logprobs_np),
            )
            for s in resp.sequences
        ],
        prompt_logprobs_np=resp.prompt_logprobs_np,
        topk_prompt_logprobs_np=_official_topk(resp.topk_prompt_logprobs_np),
        target_prompt_logprobs=None
        if resp.target_prompt_logprobs is None
        else official_tensor_to_tinkjax(resp.target_prompt_logprobs),
        prompt_cache_hit_tokens=resp.prompt_cache_hit_tokens,
        prompt_alt_tokens=None
        if alt is None
        else T.PromptAltTokens(
            tokens=official_tensor_to_tinkjax(alt.tokens),
            logprobs=official_tensor_to_tinkjax(alt.logprobs),
        ),
    )


# -- responses: tinkjax values → bytes written with the official generated module ----------------
_PB_DTYPE = {"float32": opb.DTYPE_FLOAT32, "int64": opb.DTYPE_INT64}


def _fill_tensor(msg: Any, td: T.TensorData) -> None:
    msg.dtype = _PB_DTYPE[td.dtype]
    if td.shape is not None:
        msg.shape.extend(td.shape)
    np_dtype = "<f4" if td.dtype == "float32" else "<i8"
    if td.is_sparse:
        msg.sparse_csr.values = np.asarray(td.data, dtype=np_dtype).tobytes()
        msg.sparse_csr.crow_indices = np.asarray(td.sparse_crow_indices, "<i8").tobytes()
        msg.sparse_csr.col_indices = np.asarray(td.sparse_col_indices, "<i8").tobytes()
    else:
        msg.dense = np.asarray(td.data, dtype=np_dtype).tobytes()


def build_output_pb(out: T.ForwardBackwardOutput, *, records: int = 1) -> bytes:
    """``out`` as the service writes it: per-field ``BatchedTensor``s in ``records`` records.

    Datums are split into ``records`` consecutive runs (the service starts a new record when a
    field's trailing shape or dtype changes; extra splits are legal and exercise concatenation).
    """
    msg = opb.ForwardBackwardOutput(loss_fn_output_type=out.loss_fn_output_type)
    for k, v in out.metrics.items():
        msg.metrics[k] = v
    runs: list[list[dict[str, T.TensorData]]] = []
    last_key: object = None
    for o in out.loss_fn_outputs:
        key = sorted((n, t.dtype, tuple(t.dense_shape[1:])) for n, t in o.items())
        if not runs or key != last_key or len(runs) < records:
            runs.append([])
            last_key = key
        runs[-1].append(o)
    for run in runs:
        rec = msg.loss_fn_outputs.add(type_tag=out.loss_fn_output_type, num_datums=len(run))
        for name in run[0]:
            tensors = [o[name] for o in run]
            np_dtype = np.dtype("<f4") if tensors[0].dtype == "float32" else np.dtype("<i8")
            flats = [np.asarray(t.data, dtype=np_dtype).reshape(-1) for t in tensors]
            offsets = np.concatenate([[0], np.cumsum([f.nbytes for f in flats])]).astype("<i8")
            bt = rec.fields[name]
            bt.data = b"".join(f.tobytes() for f in flats)
            bt.offsets = offsets.tobytes()
            bt.dtype = _PB_DTYPE[tensors[0].dtype]
            bt.trailing_shape.extend(tensors[0].dense_shape[1:])
    return bytes(msg.SerializeToString())


def _fill_topk(msg: Any, tk: T.TopkLogprobs) -> None:
    msg.token_ids = np.asarray(tk.token_ids, "<i4").tobytes()
    msg.logprobs = np.asarray(tk.logprobs, "<f4").tobytes()
    msg.k = tk.k
    msg.length = tk.length


def build_sample_pb(resp: T.SampleResponse) -> bytes:
    """``resp`` written with the official generated module, as the service does."""
    msg = opb.SampleResponse(prompt_cache_hit_tokens=resp.prompt_cache_hit_tokens)
    for s in resp.sequences:
        sm = msg.sequences.add()
        sm.stop_reason = opb.STOP_REASON_STOP if s.stop_reason == "stop" else opb.STOP_REASON_LENGTH
        sm.tokens = np.asarray(s.tokens_np, "<i4").tobytes()
        if s.logprobs_np is not None:
            sm.logprobs = np.asarray(s.logprobs_np, "<f4").tobytes()
        if s.topk_logprobs_np is not None:
            _fill_topk(sm.topk_sampled_logprobs, s.topk_logprobs_np)
    if resp.prompt_logprobs_np is not None:
        msg.prompt_logprobs = np.asarray(resp.prompt_logprobs_np, "<f4").tobytes()
    if resp.topk_prompt_logprobs_np is not None:
        _fill_topk(msg.topk_prompt_logprobs, resp.topk_prompt_logprobs_np)
    if resp.target_prompt_logprobs is not None:
        _fill_tensor(msg.target_prompt_logprobs, resp.target_prompt_logprobs)
    if resp.prompt_alt_tokens is not None:
        _fill_tensor(msg.prompt_alt_tokens.tokens, resp.prompt_alt_tokens.tokens)
        _fill_tensor(msg.prompt_alt_tokens.logprobs, resp.prompt_alt_tokens.logprobs)
    return bytes(msg.SerializeToString())


__all__ = [
    "build_output_pb",
    "build_sample_pb",
    "fb_input_of",
    "official_output_to_tinkjax",
    "official_request_proto",
    "official_sample_to_tinkjax",
    "opb",
    "request_conv",
    "response_conv",
    "tinker",
    "to_official_datum",
    "to_official_tensor",
]
