"""Protobuf codec of ``SampleResponse`` (int32 tokens, float32 logprobs, top-k, alt tokens)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from tinkjax.errors import DecodeError, TensorError, WireFormatError
from tinkjax.types import PromptAltTokens, SampledSequence, SampleResponse, TopkLogprobs

from ._pb import tinkjax_wire_pb2 as pb
from ._proto_common import checked_frombuffer, parse_message, tensor_from_pb, tensor_to_pb

__all__ = ["decode_sample_response", "encode_sample_response"]

_STOP_TO_PB = {"stop": pb.STOP_REASON_STOP, "length": pb.STOP_REASON_LENGTH}
_PB_TO_STOP = {pb.STOP_REASON_STOP: "stop", pb.STOP_REASON_LENGTH: "length"}


# -- sample response --------------------------------------------------------------------------
def _topk_to_pb(topk: TopkLogprobs, msg: Any) -> None:
    msg.token_ids = np.ascontiguousarray(topk.token_ids, dtype="<i4").tobytes()
    msg.logprobs = np.ascontiguousarray(topk.logprobs, dtype="<f4").tobytes()
    msg.k = topk.k
    msg.length = topk.length


def _topk_from_pb(msg: Any, field: str) -> TopkLogprobs | None:
    if msg.k == 0 or msg.length == 0:
        return None
    ids = checked_frombuffer(msg.token_ids, np.dtype("<i4"), f"{field}.token_ids")
    lps = checked_frombuffer(msg.logprobs, np.dtype("<f4"), f"{field}.logprobs")
    try:
        return TopkLogprobs(token_ids=ids, logprobs=lps, k=msg.k, length=msg.length)
    except WireFormatError as exc:
        raise TensorError(str(exc), field=field) from None


def encode_sample_response(response: SampleResponse) -> bytes:
    """Serialize a ``SampleResponse`` (int32 tokens, float32 logprobs)."""
    msg = pb.SampleResponse()
    for seq in response.sequences:
        smsg = msg.sequences.add()
        smsg.stop_reason = _STOP_TO_PB[seq.stop_reason]
        smsg.tokens = np.ascontiguousarray(seq.tokens_np, dtype="<i4").tobytes()
        if seq.logprobs_np is not None:
            smsg.logprobs = np.ascontiguousarray(seq.logprobs_np, dtype="<f4").tobytes()
        if seq.topk_logprobs_np is not None:
            _topk_to_pb(seq.topk_logprobs_np, smsg.topk_sampled_logprobs)
    if response.prompt_logprobs_np is not None:
        msg.prompt_logprobs = np.ascontiguousarray(
            response.prompt_logprobs_np, dtype="<f4"
        ).tobytes()
    if response.topk_prompt_logprobs_np is not None:
        _topk_to_pb(response.topk_prompt_logprobs_np, msg.topk_prompt_logprobs)
    msg.prompt_cache_hit_tokens = response.prompt_cache_hit_tokens
    if response.target_prompt_logprobs is not None:
        tensor_to_pb(response.target_prompt_logprobs, msg.target_prompt_logprobs)
    if response.prompt_alt_tokens is not None:
        tensor_to_pb(response.prompt_alt_tokens.tokens, msg.prompt_alt_tokens.tokens)
        tensor_to_pb(response.prompt_alt_tokens.logprobs, msg.prompt_alt_tokens.logprobs)
    return bytes(msg.SerializeToString())


def decode_sample_response(
    data: bytes, sequence_ids: Sequence[str] | None = None
) -> SampleResponse:
    """Parse a ``SampleResponse``; ``sequence_ids`` (from the submission) are stamped in order."""
    msg = parse_message(pb.SampleResponse(), data, "SampleResponse")
    if sequence_ids is not None and len(sequence_ids) != len(msg.sequences):
        raise DecodeError(
            f"{len(msg.sequences)} sequences but {len(sequence_ids)} sample_sequence_ids",
            field="sequences",
        )
    sequences = []
    for i, smsg in enumerate(msg.sequences):
        field = f"sequences[{i}]"
        stop = _PB_TO_STOP.get(smsg.stop_reason)
        if stop is None:
            raise DecodeError(
                f"unknown stop_reason {smsg.stop_reason}", field=f"{field}.stop_reason"
            )
        tokens = checked_frombuffer(smsg.tokens, np.dtype("<i4"), f"{field}.tokens")
        logprobs = (
            checked_frombuffer(smsg.logprobs, np.dtype("<f4"), f"{field}.logprobs")
            if smsg.HasField("logprobs")
            else None
        )
        topk = (
            _topk_from_pb(smsg.topk_sampled_logprobs, f"{field}.topk_sampled_logprobs")
            if smsg.HasField("topk_sampled_logprobs")
            else None
        )
        try:
            sequences.append(
                SampledSequence(
                    stop_reason=stop,  # type: ignore[arg-type]
                    tokens_np=tokens,
                    logprobs_np=logprobs,
                    sequence_id=sequence_ids[i] if sequence_ids is not None else None,
                    topk_logprobs_np=topk,
                )
            )
        except WireFormatError as exc:
            raise DecodeError(str(exc), field=field) from None
    alt = None
    if msg.HasField("prompt_alt_tokens"):
        alt = PromptAltTokens(
            tokens=tensor_from_pb(msg.prompt_alt_tokens.tokens, "prompt_alt_tokens.tokens"),
            logprobs=tensor_from_pb(msg.prompt_alt_tokens.logprobs, "prompt_alt_tokens.logprobs"),
        )
    return SampleResponse(
        sequences=sequences,
        prompt_logprobs_np=(
            checked_frombuffer(msg.prompt_logprobs, np.dtype("<f4"), "prompt_logprobs")
            if msg.HasField("prompt_logprobs")
            else None
        ),
        topk_prompt_logprobs_np=(
            _topk_from_pb(msg.topk_prompt_logprobs, "topk_prompt_logprobs")
            if msg.HasField("topk_prompt_logprobs")
            else None
        ),
        target_prompt_logprobs=(
            tensor_from_pb(msg.target_prompt_logprobs, "target_prompt_logprobs")
            if msg.HasField("target_prompt_logprobs")
            else None
        ),
        prompt_cache_hit_tokens=msg.prompt_cache_hit_tokens,
        prompt_alt_tokens=alt,
    )
