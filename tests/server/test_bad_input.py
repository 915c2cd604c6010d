"""Bad input on every endpoint: a 4xx with a JSON body naming the problem, the server keeps
serving, and its state is unchanged. Includes property-based fuzzing of request bodies."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tinkjax.codec import encode_forward_backward_request
from tinkjax.server import ServerHandle
from tinkjax.types import Datum, ForwardBackwardInput, ForwardBackwardRequest, ModelInput

from .conftest import MICRO, ce_datum, fwdbwd_body, new_model, new_session, post

TOKENS = list(b"bad input never hurts")
FUZZ_COUNTS: dict[str, int] = {}


@pytest.fixture(scope="module")
def ctx(http: httpx.Client) -> dict[str, str]:
    session = new_session(http)
    model = new_model(http, session)
    r = post(http, "create_sampling_session", {
        "session_id": session, "sampling_session_seq_id": 0, "base_model": MICRO,
    })  # fmt: skip
    assert r.status_code == 200, r.text
    return {"session": session, "model": model, "sampler": r.json()["sampling_session_id"]}


def _state(server: ServerHandle, http: httpx.Client, model: str) -> tuple[Any, ...]:
    backend = server.backend
    runs = http.get("/api/v1/training_runs", params={"limit": 1}).json()["cursor"]["total_count"]
    return (
        len(backend.models.records()), len(backend.futures), server.scheduler.next_seq(model),
        sum(server.scheduler.applied.values()), runs,
        len(http.get("/api/v1/checkpoints").json()["checkpoints"]),
        len(http.get("/api/v1/sessions", params={"limit": 1000}).json()["sessions"]),
    )  # fmt: skip


def _check_error(r: httpx.Response, status: int | tuple[int, ...], *needles: str) -> None:
    expected = (status,) if isinstance(status, int) else status
    assert r.status_code in expected, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    detail = r.json()["detail"]
    for needle in needles:
        assert needle in detail, (needle, detail)


def _cases(ctx: dict[str, str]) -> list[tuple[str, str, Any, int, tuple[str, ...]]]:
    s, m, smp = ctx["session"], ctx["model"], ctx["sampler"]
    create = {"session_id": s, "model_seq_id": 99, "base_model": MICRO,
              "lora_config": {"rank": 4}}  # fmt: skip
    sample = {"prompt": {"chunks": [{"type": "encoded_text", "tokens": [1, 2, 3]}]},
              "sampling_params": {"max_tokens": 4}, "sampling_session_id": smp,
              "num_samples": 1}  # fmt: skip
    datum = ce_datum(TOKENS)
    bad_token = ce_datum([*TOKENS[:5], 300, *TOKENS[5:]])
    rl = {"model_input": datum["model_input"],
          "loss_fn_inputs": {"target_tokens": datum["loss_fn_inputs"]["target_tokens"]}}  # fmt: skip
    return [
        # method, path, body, status, words the detail must contain
        ("POST", "client/config", b"{nope", 400, ("malformed JSON",)),
        (
            "POST",
            "create_session",
            {"tags": "x", "user_metadata": {}, "sdk_version": "1"},
            400,
            ("tags",),
        ),
        ("POST", "create_session", b"", 400, ("empty",)),
        ("POST", "session_heartbeat", {"session_id": "ghost"}, 404, ("ghost",)),
        (
            "POST",
            "sessions/ghost/finish",
            {"reason": {"type": "success"}, "detail": None},
            404,
            ("ghost",),
        ),
        ("POST", "create_model", {**create, "session_id": "ghost"}, 404, ("ghost",)),
        ("POST", "create_model", {**create, "base_model": "gpt-17"}, 400, ("gpt-17",)),
        ("POST", "create_model", {**create, "lora_config": {"rank": 0}}, 400, ("rank",)),
        (
            "POST",
            "create_model",
            {
                **create,
                "lora_config": {
                    "rank": 4,
                    "train_attn": False,
                    "train_mlp": False,
                    "train_unembed": False,
                },
            },
            400,
            ("train_attn",),
        ),
        ("POST", "create_model", {**create, "model_seq_id": "one"}, 400, ("model_seq_id",)),
        ("POST", "create_model", {**create, "surprise": 1}, 400, ("surprise",)),
        ("POST", "get_info", {"model_id": "ghost:train:0"}, 404, ("ghost:train:0",)),
        ("POST", "forward_backward", fwdbwd_body("ghost:train:0", 1, [datum]), 404, ("ghost",)),
        ("POST", "forward_backward", fwdbwd_body(m, 10**6, [bad_token]), 400, ("token 300",)),
        (
            "POST",
            "forward_backward",
            fwdbwd_body(m, 10**6, [datum], loss_fn="hinge"),
            400,
            ("hinge",),
        ),
        (
            "POST",
            "forward_backward",
            fwdbwd_body(m, 10**6, [rl], loss_fn="ppo"),
            400,
            ("logprobs",),
        ),
        (
            "POST",
            "forward_backward",
            fwdbwd_body(m, 10**6, [datum], config={"beta": 1}),
            400,
            ("beta",),
        ),
        ("POST", "forward_backward", fwdbwd_body(m, -1, [datum]), 400, ("seq_id",)),
        (
            "POST",
            "forward",
            fwdbwd_body(m, 10**6, [{"model_input": {"chunks": []}}], forward=True),
            400,
            ("input_tokens",),
        ),
        (
            "POST",
            "optim_step",
            {"model_id": m, "seq_id": 10**6, "adam_params": {"learning_rate": -1.0}},
            400,
            ("learning_rate",),
        ),
        (
            "POST",
            "optim_step",
            {"model_id": m, "seq_id": 10**6, "adam_params": {"beta1": 1.0}},
            400,
            ("beta1",),
        ),
        ("POST", "optim_step", {"model_id": "ghost", "seq_id": 1}, 404, ("ghost",)),
        (
            "POST",
            "save_weights",
            {"model_id": m, "seq_id": 10**6, "path": "../etc"},
            400,
            ("../etc",),
        ),
        ("POST", "save_weights_for_sampler", {"model_id": m, "seq_id": 10**6}, 400, ("path",)),
        (
            "POST",
            "load_weights",
            {"session_id": s, "model_seq_id": 98, "path": "/tmp/x", "optimizer": True},
            400,
            ("tinker://",),
        ),
        (
            "POST",
            "load_weights",
            {
                "session_id": s,
                "model_seq_id": 98,
                "optimizer": False,
                "path": f"tinker://{m}/weights/none",
            },
            404,
            ("none",),
        ),
        ("POST", "unload_model", {"model_id": "ghost"}, 404, ("ghost",)),
        ("POST", "weights_info", {"tinker_path": "tinker://a/b"}, 400, ("tinker://a/b",)),
        ("POST", "weights_info", {"tinker_path": f"tinker://{m}/weights/none"}, 404, ("none",)),
        (
            "POST",
            "create_sampling_session",
            {"session_id": s, "sampling_session_seq_id": 50},
            400,
            ("base_model",),
        ),
        (
            "POST",
            "create_sampling_session",
            {
                "session_id": s,
                "sampling_session_seq_id": 50,
                "model_path": f"tinker://{m}/sampler_weights/x",
            },
            404,
            ("sampler_weights/x",),
        ),
        ("POST", "asample", {**sample, "sampling_session_id": "ghost"}, 404, ("ghost",)),
        (
            "POST",
            "asample",
            {**sample, "prompt": {"chunks": [{"type": "encoded_text", "tokens": [1, 999]}]}},
            400,
            ("token 999",),
        ),
        (
            "POST",
            "asample",
            {**sample, "sampling_params": {"max_tokens": 10**6}},
            400,
            ("max_tokens",),
        ),
        (
            "POST",
            "asample",
            {**sample, "sampling_params": {"temperature": -1}},
            400,
            ("temperature",),
        ),
        ("POST", "asample", {**sample, "sampling_params": {"top_p": 0}}, 400, ("top_p",)),
        ("POST", "asample", {**sample, "sampling_params": {"stop": [1000]}}, 400, ("stop",)),
        ("POST", "asample", {**sample, "num_samples": 0}, 400, ("num_samples",)),
        ("POST", "asample", {**sample, "topk_prompt_logprobs": 10**6}, 400, ("topk_prompt",)),
        ("POST", "asample", {**sample, "topk_sample_logprobs": 5}, 400, ("topk_sample",)),
        ("POST", "retrieve_future", {"request_id": 5}, 400, ("request_id",)),
        ("POST", "telemetry", {"events": "many"}, 400, ("events",)),
        ("GET", "training_runs/ghost:train:0", None, 404, ("ghost",)),
        ("GET", "training_runs/ghost:train:0/checkpoints", None, 404, ("ghost",)),
        ("DELETE", f"training_runs/{m}/checkpoints/weights/none", None, 404, ("none",)),
        ("DELETE", f"training_runs/{m}/checkpoints/oops/none", None, 400, ("oops",)),
        ("GET", f"training_runs/{m}/checkpoints/weights/none/archive", None, 404, ("none",)),
        ("GET", "training_runs?limit=abc", None, 400, ("limit",)),
        ("GET", "sessions/ghost", None, 404, ("ghost",)),
        ("GET", "samplers/ghost:sample:0", None, 404, ("ghost:sample:0",)),
        ("GET", "create_model", None, 405, ("GET",)),
        ("POST", "no/such/endpoint", {}, 404, ("no/such/endpoint",)),
    ]


def test_bad_input_every_endpoint(
    http: httpx.Client, server: ServerHandle, ctx: dict[str, str]
) -> None:
    before = _state(server, http, ctx["model"])
    cases = _cases(ctx)
    for method, path, body, status, needles in cases:
        kwargs: dict[str, Any] = {}
        if isinstance(body, bytes):
            kwargs["content"] = body
        elif body is not None:
            kwargs["json"] = body
        r = http.request(method, f"/api/v1/{path}", **kwargs)
        try:
            _check_error(r, status, *needles)
        except AssertionError as exc:
            raise AssertionError(f"{method} {path}: {exc}") from None
    assert _state(server, http, ctx["model"]) == before
    assert http.get("/api/v1/healthz").json() == {"status": "ok"}


def test_malformed_protobuf_and_oversized_body(
    http: httpx.Client, server: ServerHandle, ctx: dict[str, str]
) -> None:
    before = _state(server, http, ctx["model"])
    headers = {"content-type": "application/x-protobuf"}
    r = post(http, "forward_backward", b"\xff\xff\xff\x0f garbage", headers=headers)
    _check_error(r, 400, "protobuf")
    big = b"{" + b" " * (5 * 2**20) + b"}"
    _check_error(post(http, "create_session", big), 413, "exceeds")
    zstd = {"content-encoding": "zstd", **headers}
    _check_error(post(http, "forward_backward", b"abc", headers=zstd), 415, "zstd")
    assert _state(server, http, ctx["model"]) == before


def test_protobuf_out_of_range_token_names_it(http: httpx.Client, ctx: dict[str, str]) -> None:
    datum = Datum(
        model_input=ModelInput.from_ints([1, 2, 3]),
        loss_fn_inputs={"target_tokens": [2, 3, 4000], "weights": [1.0, 1.0, 1.0]},
    )
    req = ForwardBackwardRequest(
        forward_backward_input=ForwardBackwardInput(data=[datum], loss_fn="cross_entropy"),
        model_id=ctx["model"], seq_id=10**6,
    )  # fmt: skip
    body = encode_forward_backward_request(req)
    r = post(http, "forward_backward", body, headers={"content-type": "application/x-protobuf"})
    _check_error(r, 400, "token 4000", "data[0]")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def _fuzz_objects(ctx_keys: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """Objects mixing plausible keys (with random values) and random keys."""
    keys = st.sampled_from(sorted(ctx_keys)) | st.text(max_size=8)
    return st.dictionaries(keys, json_values | st.sampled_from(list(ctx_keys.values())), max_size=6)


FUZZ_ENDPOINTS = ["create_model", "optim_step", "asample", "forward_backward", "save_weights",
                  "load_weights", "create_sampling_session", "retrieve_future", "telemetry",
                  "weights_info"]  # fmt: skip


@settings(max_examples=500, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_fuzz_json_bodies(
    data: st.DataObject, http: httpx.Client, server: ServerHandle, ctx: dict[str, str]
) -> None:
    endpoint = data.draw(st.sampled_from(FUZZ_ENDPOINTS))
    plausible = {"model_id": ctx["model"], "session_id": ctx["session"],
                 "sampling_session_id": ctx["sampler"], "seq_id": 10**7, "base_model": MICRO,
                 "request_id": "x", "path": "tinker://a/weights/b", "prompt": {"chunks": []},
                 "sampling_params": {}, "adam_params": {}, "model_seq_id": 10**7,
                 "lora_config": {"rank": 1000}, "events": [], "tinker_path": "tinker://x",
                 "forward_backward_input": {"data": [], "loss_fn": "cross_entropy"}}  # fmt: skip
    body = data.draw(_fuzz_objects(plausible) | json_values)
    raw = json.dumps(body, allow_nan=True).encode()
    r = post(http, endpoint, raw)
    FUZZ_COUNTS[endpoint] = FUZZ_COUNTS.get(endpoint, 0) + 1
    assert r.status_code < 500, (endpoint, raw, r.text)
    if r.status_code >= 400:
        assert "detail" in r.json()


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_fuzz_protobuf_bodies(data: st.DataObject, http: httpx.Client, ctx: dict[str, str]) -> None:
    datum = Datum(
        model_input=ModelInput.from_ints([1, 2, 3]),
        loss_fn_inputs={"target_tokens": [2, 3, 4], "weights": [1.0, 0.5, 1.0]},
    )
    valid = encode_forward_backward_request(ForwardBackwardRequest(
        forward_backward_input=ForwardBackwardInput(data=[datum], loss_fn="cross_entropy"),
        model_id="ghost-model", seq_id=1,
    ))  # fmt: skip
    if data.draw(st.booleans()):
        body = data.draw(st.binary(max_size=200))
    else:  # mutate a valid request: flip, drop or insert bytes
        buf = bytearray(valid)
        for _ in range(data.draw(st.integers(1, 4))):
            i = data.draw(st.integers(0, len(buf) - 1))
            op = data.draw(st.sampled_from(["flip", "drop", "insert"]))
            if op == "flip":
                buf[i] ^= data.draw(st.integers(1, 255))
            elif op == "drop":
                del buf[i]
            else:
                buf.insert(i, data.draw(st.integers(0, 255)))
        body = bytes(buf)
    r = post(http, "forward_backward", body, headers={"content-type": "application/x-protobuf"})
    FUZZ_COUNTS["forward_backward(protobuf)"] = FUZZ_COUNTS.get("forward_backward(protobuf)", 0) + 1
    assert r.status_code < 500, (body, r.text)
    if r.status_code >= 400:
        assert "detail" in r.json()


def test_fuzz_report(http: httpx.Client) -> None:
    """Prints how many fuzzed inputs each endpoint got (run with -s to see it)."""
    total = sum(FUZZ_COUNTS.values())
    print(f"\nfuzzed inputs: {total} total: {dict(sorted(FUZZ_COUNTS.items()))}")
    assert http.get("/api/v1/healthz").status_code == 200
