"""Codec benchmark: encode + decode of a forward/backward batch, three ways in one run.

A batch of 256 ragged datums totalling 2**20 tokens (model input tokens, ``target_tokens``
int64, ``weights`` float32 in the request; ``logprobs`` float32 back). Each round runs every
variant (shuffled order, 3 consecutive calls each, median kept); the table reports medians over
rounds and ratios taken per round.

* ``tinkjax protobuf``: request encode → request decode (server side) → output encode (server
  side) → output decode. ``client`` columns count only the client's half (request encode +
  output decode), which is all the official SDK implements.
* ``tinkjax JSON``: the same four steps with the JSON-era bodies.
* ``official SDK``: ``request_conv.forward_backward_request_to_proto(...).SerializeToString()``
  + ``response_conv.deserialize_forward_backward_output`` (its server half is not public; the
  output bytes it decodes are tinkjax's, which the interop tests prove identical in meaning).

Tensor payload = bytes of ``target_tokens`` + ``weights`` + ``logprobs`` (16 B per token; the
int32 model-input tokens also travel but are not counted).

Ratios are per-round medians: ``official / tinkjax (client half)`` compares like with like;
``official client half / tinkjax full round trip`` is the conservative one (tinkjax doing all
four steps against the SDK doing two). Results go to ``bench/results/codec_bench.json``.

Run: ``python bench/codec_bench.py [--rounds N] [--tokens N]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from tinkjax import types as T
from tinkjax.codec import (
    decode_forward_backward_output,
    decode_forward_backward_request,
    decode_json,
    encode_forward_backward_output,
    encode_forward_backward_request,
    encode_json,
)

HERE = Path(__file__).resolve().parent
PB_FULL = "tinkjax protobuf (full round trip)"
PB_CLIENT = "tinkjax protobuf (client half)"
OFFICIAL = "official SDK 0.38.0 (client half)"


def make_batch(n_datums: int, n_tokens: int, seed: int = 0) -> tuple[list[int], Any, Any]:
    rng = np.random.default_rng(seed)
    raw = rng.uniform(0.25, 1.75, n_datums)
    lens = np.maximum(1, np.floor(raw / raw.sum() * n_tokens)).astype(int)
    lens[-1] += n_tokens - lens.sum()
    data = [
        T.Datum(
            model_input=T.ModelInput.from_ints(rng.integers(0, 256, n)),
            loss_fn_inputs={
                "target_tokens": rng.integers(0, 256, n),
                "weights": rng.random(n, dtype=np.float32),
            },
        )
        for n in lens
    ]
    request = T.ForwardBackwardRequest(
        forward_backward_input=T.ForwardBackwardInput(data=data, loss_fn="cross_entropy"),
        model_id="bench:train:0",
        seq_id=1,
    )
    output = T.ForwardBackwardOutput(
        loss_fn_output_type="ArrayRecord",
        loss_fn_outputs=[
            {"logprobs": T.TensorData.from_numpy(-rng.exponential(size=n).astype(np.float32))}
            for n in lens
        ],
        metrics={"loss:sum": 1.0},
    )
    return [int(x) for x in lens], request, output


def official_request(request: Any) -> Any:
    import tinker

    data = [
        tinker.Datum(
            model_input=tinker.ModelInput.from_ints(d.model_input.to_numpy().tolist()),
            loss_fn_inputs={
                "target_tokens": tinker.TensorData.from_numpy(
                    d.loss_fn_inputs["target_tokens"].data
                ),
                "weights": tinker.TensorData.from_numpy(d.loss_fn_inputs["weights"].data),
            },
        )
        for d in request.forward_backward_input.data
    ]
    return tinker.types.ForwardBackwardRequest(
        forward_backward_input=tinker.types.ForwardBackwardInput(
            data=data, loss_fn="cross_entropy"
        ),
        model_id=request.model_id,
        seq_id=request.seq_id,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--tokens", type=int, default=1 << 20)
    parser.add_argument("--datums", type=int, default=256)
    args = parser.parse_args()

    before_load = os.getloadavg()
    lens, request, output = make_batch(args.datums, args.tokens)
    payload = sum(lens) * (8 + 4 + 4)
    out_bytes = encode_forward_backward_output(output)
    out_json = encode_json(output)

    def pb_full() -> None:
        server_req = decode_forward_backward_request(encode_forward_backward_request(request))
        assert len(server_req.forward_backward_input.data) == len(lens)  # type: ignore[union-attr]
        decode_forward_backward_output(encode_forward_backward_output(output))

    def pb_client() -> None:
        encode_forward_backward_request(request)
        decode_forward_backward_output(out_bytes)

    def json_full() -> None:
        decode_json(encode_json(request), T.ForwardBackwardRequest)
        decode_json(encode_json(output), T.ForwardBackwardOutput)

    def json_client() -> None:
        encode_json(request)
        decode_json(out_json, T.ForwardBackwardOutput)

    variants: dict[str, Callable[[], None]] = {
        PB_FULL: pb_full,
        PB_CLIENT: pb_client,
        "tinkjax JSON (full round trip)": json_full,
        "tinkjax JSON (client half)": json_client,
    }
    try:
        from tinker.proto import request_conv, response_conv

        off_req = official_request(request)

        def official_client() -> None:
            request_conv.forward_backward_request_to_proto(off_req).SerializeToString()
            response_conv.deserialize_forward_backward_output(out_bytes)

        variants[OFFICIAL] = official_client
    except ImportError:
        print("tinker not installed: skipping the official SDK variant")

    for fn in variants.values():  # warm-up
        fn()
    per_round: dict[str, list[float]] = {k: [] for k in variants}
    ratios: list[float] = []
    ratios_full: list[float] = []
    for _ in range(args.rounds):
        order = list(variants)
        random.shuffle(order)
        for name in order:
            times = []
            for _ in range(3):
                t0 = time.perf_counter()
                variants[name]()
                times.append(time.perf_counter() - t0)
            per_round[name].append(statistics.median(times))
        if OFFICIAL in per_round:
            ratios.append(per_round[OFFICIAL][-1] / per_round[PB_CLIENT][-1])
            ratios_full.append(per_round[OFFICIAL][-1] / per_round[PB_FULL][-1])

    rows = []
    for name, times in per_round.items():
        med = statistics.median(times)
        rows.append(
            {"variant": name, "median_ms": med * 1e3, "payload_GB_per_s": payload / med / 1e9}
        )
    result = {
        "tokens": sum(lens),
        "datums": len(lens),
        "payload_bytes": payload,
        "rounds": args.rounds,
        "rows": rows,
        "official_over_tinkjax_client_half": statistics.median(ratios) if ratios else None,
        "official_client_half_over_tinkjax_full": (
            statistics.median(ratios_full) if ratios_full else None
        ),
        "load_average_before": before_load,
        "load_average_after": os.getloadavg(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "codec_bench.json").write_text(json.dumps(result, indent=2))
    print(f"{len(lens)} datums, {sum(lens)} tokens, tensor payload {payload / 1e6:.1f} MB")
    print("| variant | median ms | payload GB/s |\n|---|---|---|")
    for row in rows:
        print(f"| {row['variant']} | {row['median_ms']:.1f} | {row['payload_GB_per_s']:.2f} |")
    if ratios:
        print(
            f"official / tinkjax (client half, per-round median): {statistics.median(ratios):.1f}x"
        )
        print(
            f"official client half / tinkjax full round trip: {statistics.median(ratios_full):.1f}x"
        )


if __name__ == "__main__":
    main()
