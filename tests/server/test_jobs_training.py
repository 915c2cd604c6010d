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
