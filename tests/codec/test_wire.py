"""The wire objects (``tinkjax.codec._wire``): what each protocol generation puts on the wire,
decided by the object and never by its callers."""

from __future__ import annotations

import numpy as np
import pytest

from tinkjax import types as T
from tinkjax.codec import (
    JSON_WIRE,
    PROTOBUF_WIRE,
    EncodedBatch,
    WeightedChunk,
    decode_forward_backward_request,
    decode_json,
    encode_forward_backward_request,
    wire_for,
)


def _datum(n: int, *, seed: int = 0, two_d: bool = False) -> T.Datum:
    rng = np.random.default_rng(seed)
    shape = (n, 2) if two_d else (n,)
    return T.Datum(
        model_input=T.ModelInput.from_ints(rng.integers(0, 256, n).tolist()),
        loss_fn_inputs={
            "target_tokens": T.TensorData.from_numpy(rng.integers(0, 256, shape).astype(np.int64)),
            "weights": T.TensorData.from_numpy(np.ones(shape, np.float32)),
        },
    )


def _request(
    forward_only: bool, data: list[T.Datum]
) -> T.ForwardRequest | T.ForwardBackwardRequest:
    fb_input = T.ForwardBackwardInput(data=data, loss_fn="cross_entropy")
    if forward_only:
        return T.ForwardRequest(forward_input=fb_input, model_id="m:1", seq_id=3)
    return T.ForwardBackwardRequest(forward_backward_input=fb_input, model_id="m:1", seq_id=3)


def test_wire_for_names_each_generation_and_rejects_others() -> None:
    assert wire_for("protobuf") is PROTOBUF_WIRE
    assert wire_for("json") is JSON_WIRE
    assert (PROTOBUF_WIRE.mode, JSON_WIRE.mode) == ("protobuf", "json")
    with pytest.raises(ValueError, match="'xml'"):
        wire_for("xml")  # type: ignore[arg-type]


@pytest.mark.parametrize("forward_only", [True, False], ids=["forward", "forward_backward"])
def test_protobuf_sends_every_chunk_to_one_path(forward_only: bool) -> None:
    request = _request(forward_only, [_datum(4), _datum(2, seed=1)])
    path, body, content_type = PROTOBUF_WIRE.encode_fwdbwd(request)
    assert path == "/api/v1/forward_backward"
    assert content_type == "application/x-protobuf"
    assert body == encode_forward_backward_request(request)
    assert decode_forward_backward_request(body) == request


@pytest.mark.parametrize(
    ("forward_only", "path"),
    [(True, "/api/v1/forward"), (False, "/api/v1/forward_backward")],
    ids=["forward", "forward_backward"],
)
def test_json_era_has_a_path_per_pass(forward_only: bool, path: str) -> None:
    request = _request(forward_only, [_datum(3)])
    encoded = JSON_WIRE.encode_fwdbwd(request)
    assert (encoded.path, encoded.content_type) == (path, "application/json")
    assert decode_json(encoded.body, type(request)) == request


def test_only_protobuf_pre_encodes_and_only_1d_targets() -> None:
    data = [_datum(4), _datum(6, seed=1)]
    assert JSON_WIRE.pre_encode(data) is None
    assert PROTOBUF_WIRE.pre_encode([_datum(4), _datum(3, two_d=True)]) is None
    batch = PROTOBUF_WIRE.pre_encode(data)
    assert isinstance(batch, EncodedBatch)
    assert (len(batch), batch.lengths) == (2, [4, 6])
    with pytest.raises(ValueError, match="protobuf"):
        JSON_WIRE.encode_weighted(
            batch.chunks([2], np.zeros(10, np.float32))[0],
            model_id="m:1",
            seq_id=3,
            loss_fn="cross_entropy",
            forward_only=True,
        )


def test_encoded_batch_sizes_count_fields_weights_and_framing() -> None:
    """A datum's size: its encoded fields, 4 bytes per weight and 24 bytes of framing (the
    estimate the chunking has always used)."""
    data = [_datum(n, seed=n) for n in (1, 5, 300)]
    batch = EncodedBatch(data)
    assert batch.sizes == [
        len(before) + len(after) + 4 * n + 24
        for (before, after), n in zip(batch.prefixes, [1, 5, 300], strict=True)
    ]


@pytest.mark.parametrize("forward_only", [True, False], ids=["forward", "forward_backward"])
def test_weighted_chunks_equal_the_full_encoding_of_their_datums(forward_only: bool) -> None:
    data = [_datum(n, seed=n) for n in (3, 1, 4, 2)]
    weights = np.random.default_rng(0).normal(size=10).astype(np.float32)
    batch = PROTOBUF_WIRE.pre_encode(data)
    assert batch is not None
    chunks = batch.chunks([3, 1], weights)
    assert [len(c) for c in chunks] == [3, 1]
    assert all(isinstance(c, WeightedChunk) for c in chunks)
    pos = 0
    for chunk, part in zip(chunks, [data[:3], data[3:]], strict=True):
        full = []
        for datum in part:
            n = datum.loss_fn_inputs["target_tokens"].dense_shape[0]
            w = T.TensorData.from_numpy(weights[pos : pos + n])
            inputs = {"target_tokens": datum.loss_fn_inputs["target_tokens"], "weights": w}
            full.append(T.Datum(model_input=datum.model_input, loss_fn_inputs=inputs))
            pos += n
        encoded = PROTOBUF_WIRE.encode_weighted(
            chunk, model_id="m:1", seq_id=3, loss_fn="cross_entropy", forward_only=forward_only
        )
        assert encoded.path == "/api/v1/forward_backward"
        assert encoded.content_type == "application/x-protobuf"
        assert encoded.body == encode_forward_backward_request(_request(forward_only, full))
    with pytest.raises(ValueError, match="add up"):
        batch.chunks([3], weights)


def test_a_poll_accepts_protobuf_only_for_protobuf_results_on_the_protobuf_wire() -> None:
    both = "application/x-protobuf, application/json"
    assert PROTOBUF_WIRE.poll_accept(T.ForwardBackwardOutput) == both
    assert PROTOBUF_WIRE.poll_accept(T.SampleResponse) == both
    assert PROTOBUF_WIRE.poll_accept(T.OptimStepResponse) == "application/json"
    for result_type in (T.ForwardBackwardOutput, T.SampleResponse, T.OptimStepResponse):
        assert JSON_WIRE.poll_accept(result_type) == "application/json"
