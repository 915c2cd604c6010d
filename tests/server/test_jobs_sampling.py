"""Sampling jobs: sessions take turns on the worker (a small request is not starved behind
another session's large ones), and a request sampled in pieces equals one call."""

from __future__ import annotations

import threading
from typing import Any

import httpx
import pytest

from tinkjax.server import ServerHandle, _jobs_sampling
from tinkjax.server._scheduler import Job

from .conftest import MICRO, new_session, post, result

PROMPT = {"chunks": [{"type": "encoded_text", "tokens": list(b"fair share")}]}


def _sampler(http: httpx.Client) -> str:
    body = {"session_id": new_session(http), "sampling_session_seq_id": 0, "base_model": MICRO}
    r = post(http, "create_sampling_session", body)
    assert r.status_code == 200, r.text
    return str(r.json()["sampling_session_id"])


def _sample(http: httpx.Client, sampler: str, n: int, **params: Any) -> str:
    body = {
        "sampling_session_id": sampler, "prompt": PROMPT, "num_samples": n,
        "sampling_params": {"max_tokens": 16, "temperature": 1.0, "stop": [], **params},
    }  # fmt: skip
    r = post(http, "asample", body)
    assert r.status_code == 200, r.text
    return str(r.json()["request_id"])


def test_small_sample_is_not_starved_by_another_sessions_large_ones(
    http: httpx.Client, server: ServerHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    tenant_a, tenant_b = _sampler(http), _sampler(http)
    futures = server.backend.futures
    finished: list[str] = []
    complete = futures.complete

    def recording(request_id: str, value: Any) -> None:
        finished.append(request_id)
        complete(request_id, value)

    monkeypatch.setattr(futures, "complete", recording)
    gate = threading.Event()
    server.scheduler.submit(Job("gate-sampling", "test", run=lambda: gate.wait(30)))
    large = [_sample(http, tenant_a, 32) for _ in range(4)]
    small = _sample(http, tenant_b, 1)
    gate.set()
    assert len(result(http, small).json()["sequences"]) == 1
    for request_id in large:
        assert len(result(http, request_id).json()["sequences"]) == 32
    order = [r for r in finished if r in {small, *large}]
    assert len(order) == 5
    # Round-robin per piece: B's one piece runs after at most one piece of A.
    assert order.index(small) == 0, order
    assert _jobs_sampling.SAMPLE_ROWS_PER_TURN < 32  # A's requests ran in pieces


def test_sampling_in_pieces_equals_one_call(
    http: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    sampler = _sampler(http)
    n = _jobs_sampling.SAMPLE_ROWS_PER_TURN + 3  # two pieces
    pieces = result(http, _sample(http, sampler, n, seed=11)).json()["sequences"]
    monkeypatch.setattr(_jobs_sampling, "SAMPLE_ROWS_PER_TURN", 1024)
    whole = result(http, _sample(http, sampler, n, seed=11)).json()["sequences"]
    assert [s["tokens"] for s in pieces] == [s["tokens"] for s in whole]
    assert len({tuple(s["tokens"]) for s in whole}) > 1  # the rows differ from each other


def test_a_sample_is_validated_once_at_the_edge(
    http: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server's checked job carries the config it was checked against; the runtime trusts
    it (direct users of the runtime still get its own checks)."""
    import numpy as np

    from tinkjax.models import ModelRuntime, SampleJob

    calls: list[int] = []
    original = ModelRuntime._check_sample

    def counting(self: ModelRuntime, request: SampleJob) -> Any:
        calls.append(1)
        return original(self, request)

    monkeypatch.setattr(ModelRuntime, "_check_sample", counting)
    sampler = _sampler(http)
    r = result(http, _sample(http, sampler, 2, max_tokens=4))
    assert r.status_code == 200, r.text
    assert len(r.json()["sequences"]) == 2
    assert calls == []
    direct = ModelRuntime(MICRO)
    with pytest.raises(ValueError, match="top_p"):
        direct.sample(SampleJob(snapshot=None, prompt=np.array([1, 2], np.int32), top_p=0.0))
    assert calls == [1]
