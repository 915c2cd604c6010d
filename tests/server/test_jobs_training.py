"""Fused forward/backward: a failed fused call fails every job once (no one-by-one re-runs), a
job whose model is gone fails alone, and unloading fails the model's queued requests."""

from __future__ import annotations

import threading
from typing import Any

import httpx
import pytest

from tinkjax.server import ServerHandle
from tinkjax.server._scheduler import FusedWork, Job
from tinkjax.server._validate import fwdbwd_item
from tinkjax.types import Datum, ModelInput

from .conftest import MICRO, ce_datum, fwdbwd_body, new_model, new_session, post, result

TOKENS = list(b"fused jobs fail together")


def _blocked(server: ServerHandle, tag: str) -> threading.Event:
    gate = threading.Event()
    server.scheduler.submit(Job(f"gate-{tag}", "test", run=lambda: gate.wait(30)))
    return gate


def test_fused_failure_fails_every_job_without_rerunning(
    http: httpx.Client, server: ServerHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    session = new_session(http)
    models = [new_model(http, session, seq=i) for i in range(2)]
    runtime = server.backend.models.runtime(MICRO)
    calls: list[int] = []

    def broken(items: list[Any], *, forward_only: bool) -> list[Any]:
        calls.append(len(items))
        raise RuntimeError("device lost")

    gate = _blocked(server, session)
    subs = [
        post(http, "forward", fwdbwd_body(m, server.scheduler.next_seq(m), [ce_datum(TOKENS)],
                                          forward=True))
        for m in models
    ]  # fmt: skip
    monkeypatch.setattr(runtime, "forward_backward", broken)
    gate.set()
    outs = [result(http, r.json()["request_id"]).json() for r in subs]
    assert calls == [2]  # one fused call, never retried one job at a time
    assert [o["category"] for o in outs] == ["server", "server"]
    assert all("device lost" in o["error"] for o in outs)


def test_job_of_a_gone_model_fails_alone(http: httpx.Client, server: ServerHandle) -> None:
    session = new_session(http)
    model = new_model(http, session)
    seq = server.scheduler.next_seq(model)
    live = post(http, "forward", fwdbwd_body(model, seq, [ce_datum(TOKENS)], forward=True))
    assert result(http, live.json()["request_id"]).status_code == 200
    # Two fused jobs built by the server, one of them for an adapter the runtime never had.
    training = server.backend.training
    cfg = server.backend.models.config(MICRO)
    datum = Datum(
        model_input=ModelInput.from_ints(TOKENS[:-1]),
        loss_fn_inputs={"target_tokens": TOKENS[1:], "weights": [1.0] * (len(TOKENS) - 1)},
    )
    jobs = [
        Job(f"j-{mid}", "forward", fused=FusedWork(
            MICRO, fwdbwd_item(cfg, mid, [datum], "cross_entropy", None), True,
            runner=training.run_fused))
        for mid in (model, f"{session}:train:404")
    ]  # fmt: skip
    probe = Job(f"probe-{session}", "test", run=lambda: training.run_fused(jobs))
    server.scheduler.submit(probe)
    for _ in range(600):
        record = server.backend.futures.get(probe.request_id)
        assert record is not None
        if record.state != "pending":
            break
        threading.Event().wait(0.05)
    assert record.state == "done", record.error
    ok, gone = record.result
    assert "loss:sum" in ok.metrics
    assert "was unloaded" in gone.message
    assert gone.status == 404


def test_unload_fails_the_models_ready_requests(http: httpx.Client, server: ServerHandle) -> None:
    model = new_model(http, new_session(http))
    gate = _blocked(server, model)
    unload = post(http, "unload_model", {"model_id": model})
    late = post(http, "forward", fwdbwd_body(model, server.scheduler.next_seq(model),
                                             [ce_datum(TOKENS)], forward=True))  # fmt: skip
    assert late.status_code == 200, late.text
    gate.set()
    assert result(http, unload.json()["request_id"]).json()["model_id"] == model
    out = result(http, late.json()["request_id"]).json()
    assert out["category"] == "user"
    assert "unloaded" in out["error"]


@pytest.mark.parametrize(
    ("adam", "field"),
    [
        ({"eps": 0.0}, "adam_params.eps"),
        ({"learning_rate": 1e30}, "adam_params.learning_rate"),
        ({"learning_rate": 1e-4, "weight_decay": 1e30}, "adam_params.weight_decay"),
        ({"learning_rate": None}, "adam_params.learning_rate"),
        ({"beta2": 1.0}, "adam_params.beta2"),
    ],
)
def test_poisonous_adam_params_are_refused_naming_the_field(
    http: httpx.Client, server: ServerHandle, adam: dict[str, Any], field: str
) -> None:
    model = new_model(http, new_session(http))
    seq = server.scheduler.next_seq(model)
    r = post(http, "optim_step", {"model_id": model, "seq_id": seq, "adam_params": adam})
    assert r.status_code == 400, r.text
    assert field in r.json()["field"]
    value = adam[field.split(".")[-1]]
    detail = r.json()["detail"]
    if value is None:  # NaN and infinities as JSON writers send them
        assert "expected a finite number, got null" in detail
    else:
        assert f"{value:g}" in detail


def _logprobs(http: httpx.Client, server: ServerHandle, model: str) -> list[float]:
    seq = server.scheduler.next_seq(model)
    r = post(http, "forward", fwdbwd_body(model, seq, [ce_datum(TOKENS)], forward=True))
    out = result(http, r.json()["request_id"]).json()
    return list(out["loss_fn_outputs"][0]["logprobs"]["data"])


def test_overflowing_backward_is_refused_and_no_answer_carries_null(
    http: httpx.Client, server: ServerHandle
) -> None:
    model = new_model(http, new_session(http))
    before = _logprobs(http, server, model)
    seq = server.scheduler.next_seq(model)
    huge = fwdbwd_body(model, seq, [ce_datum(TOKENS, 3e38), ce_datum(TOKENS, -3e38)])
    r = post(http, "forward_backward", huge)
    failed = result(http, r.json()["request_id"])
    assert "null" not in failed.text
    assert failed.json()["category"] == "user"
    assert "non-finite" in failed.json()["error"]
    step = post(http, "optim_step", {"model_id": model, "seq_id": seq + 1,
                                     "adam_params": {"learning_rate": 1e-2}})  # fmt: skip
    done = result(http, step.json()["request_id"])
    assert "null" not in done.text
    assert done.json()["metrics"]["grad_norm:mean"] == 0.0  # nothing was accumulated
    assert _logprobs(http, server, model) == before


def test_step_that_would_overflow_is_refused_and_changes_nothing(
    http: httpx.Client, server: ServerHandle
) -> None:
    model = new_model(http, new_session(http))
    seq = server.scheduler.next_seq(model)
    assert seq is not None
    # Finite gradient entries whose squares overflow float32: the gradient norm is inf.
    r = post(http, "forward_backward", fwdbwd_body(model, seq, [ce_datum(TOKENS, 1e20)]))
    assert "loss:sum" in result(http, r.json()["request_id"]).json()["metrics"]
    before = _logprobs(http, server, model)
    state = server.backend.models.runtime(MICRO).export_state(model, include_optimizer=True)
    step = post(http, "optim_step", {"model_id": model, "seq_id": seq + 2})
    failed = result(http, step.json()["request_id"]).json()
    assert failed["category"] == "user"
    assert "non-finite" in failed["error"]
    assert "unchanged" in failed["error"]
    after = server.backend.models.runtime(MICRO).export_state(model, include_optimizer=True)
    assert all((after[k] == state[k]).all() for k in state)
    assert _logprobs(http, server, model) == before
