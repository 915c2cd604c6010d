"""Per-model seq ordering, duplicates, gaps, long-polls and fusion, over raw HTTP."""

from __future__ import annotations

import threading

import httpx
import numpy as np
import pytest

from tinkjax.server import ServerHandle, _scheduler, start
from tinkjax.server._futures import FutureTable
from tinkjax.server._scheduler import Job

from .conftest import KEY_HEADERS, ce_datum, fwdbwd_body, new_model, new_session, post, result

TOKENS = list(b"ordering matters here")


@pytest.fixture(scope="module")
def model(http: httpx.Client) -> str:
    return new_model(http, new_session(http))


def _seq(server: ServerHandle, model_id: str) -> int:
    nxt = server.scheduler.next_seq(model_id)
    assert nxt is not None
    return int(nxt)


def test_duplicate_seq_same_body_is_applied_once(
    http: httpx.Client, server: ServerHandle, model: str
) -> None:
    seq = _seq(server, model)
    body = fwdbwd_body(model, seq, [ce_datum(TOKENS)])
    first = post(http, "forward_backward", body)
    second = post(http, "forward_backward", body)
    assert first.status_code == second.status_code == 200
    assert first.json()["request_id"] == second.json()["request_id"]
    out = result(http, first.json()["request_id"])
    assert out.status_code == 200
    assert "loss:sum" in out.json()["metrics"]
    # A retry after completion is still answered from the first submission.
    third = post(http, "forward_backward", body)
    assert third.json()["request_id"] == first.json()["request_id"]
    assert server.applied_count(model, seq) == 1
    # Pending gradient equals one application: an optim step now sees one datum's gradient.


def test_duplicate_seq_different_body_is_rejected(
    http: httpx.Client, server: ServerHandle, model: str
) -> None:
    seq = _seq(server, model)
    ok = post(http, "forward_backward", fwdbwd_body(model, seq, [ce_datum(TOKENS)]))
    assert ok.status_code == 200
    clash = post(http, "forward_backward", fwdbwd_body(model, seq, [ce_datum(TOKENS, 2.0)]))
    assert clash.status_code == 400
    detail = clash.json()["detail"]
    assert f"seq_id {seq}" in detail
    assert "different body" in detail
    result(http, ok.json()["request_id"])
    assert server.applied_count(model, seq) == 1


def test_reused_create_seq_is_rejected(http: httpx.Client, model: str) -> None:
    r = post(http, "optim_step", {"model_id": model, "seq_id": 0, "type": "optim_step"})
    assert r.status_code == 400
    assert "seq_id 0" in r.json()["detail"]


def test_early_arrivals_wait_for_the_gap(server: ServerHandle) -> None:
    with (
        start(seq_gap_timeout_s=60.0, long_poll_s=0.2) as srv,
        httpx.Client(base_url=srv.base_url, headers=KEY_HEADERS, timeout=30) as http,
    ):
        model = new_model(http, new_session(http))
        lr = {"learning_rate": 0.1, "beta1": 0.9, "beta2": 0.95, "eps": 1e-8,
              "weight_decay": 0.0, "grad_clip_norm": 0.0}  # fmt: skip
        # seq 3 (forward) and 2 (optim) arrive before 1 (forward_backward).
        fwd3 = post(http, "forward", fwdbwd_body(model, 3, [ce_datum(TOKENS)], forward=True))
        opt2 = post(http, "optim_step", {"model_id": model, "seq_id": 2, "adam_params": lr})
        poll = post(http, "retrieve_future", {"request_id": fwd3.json()["request_id"]})
        assert poll.status_code == 408
        assert poll.json() == {
            "type": "try_again", "request_id": fwd3.json()["request_id"], "queue_state": "active"
        }  # fmt: skip
        fwd1 = post(http, "forward_backward", fwdbwd_body(model, 1, [ce_datum(TOKENS)]))
        r1 = result(http, fwd1.json()["request_id"]).json()
        r2 = result(http, opt2.json()["request_id"]).json()
        r3 = result(http, fwd3.json()["request_id"]).json()
        assert r2["metrics"]["grad_norm:mean"] > 0  # the optim step saw seq 1's gradient
        # seq 3 ran after the update: its loss is lower than seq 1's.
        assert r3["metrics"]["loss:sum"] < r1["metrics"]["loss:sum"]
        assert [srv.applied_count(model, s) for s in (1, 2, 3)] == [1, 1, 1]


def test_gap_never_filled_fails_with_clear_error() -> None:
    with (
        start(seq_gap_timeout_s=0.5, long_poll_s=5.0) as srv,
        httpx.Client(base_url=srv.base_url, headers=KEY_HEADERS, timeout=30) as http,
    ):
        model = new_model(http, new_session(http))
        late = post(http, "forward", fwdbwd_body(model, 2, [ce_datum(TOKENS)], forward=True))
        out = result(http, late.json()["request_id"])
        body = out.json()
        assert out.status_code == 200
        assert body["category"] == "user"
        assert "seq_id 1" in body["error"]
        assert "never arrived" in body["error"]
        assert srv.applied_count(model, 2) == 0
        # The model keeps serving: the next seq after the dropped ones runs normally.
        nxt = post(http, "forward", fwdbwd_body(model, 3, [ce_datum(TOKENS)], forward=True))
        assert "loss:sum" in result(http, nxt.json()["request_id"]).json()["metrics"]
        # The missing seq id arriving late is behind the order now: a clear 400.
        stale = post(http, "forward", fwdbwd_body(model, 1, [ce_datum(TOKENS)], forward=True))
        assert stale.status_code == 400
        assert "behind" in stale.json()["detail"]


def test_retrieve_future_unknown_id_is_404(http: httpx.Client) -> None:
    r = post(http, "retrieve_future", {"request_id": "nope"})
    assert r.status_code == 404
    assert "nope" in r.json()["detail"]


def test_fusion_across_models_matches_separate_calls(
    http: httpx.Client, server: ServerHandle
) -> None:
    session = new_session(http)
    models = [new_model(http, session, seq=i, rank=4) for i in range(2)]
    gate = threading.Event()
    blocker = Job("blocker-" + session, "test", run=lambda: gate.wait(30))
    server.scheduler.submit(blocker)
    seqs = [_seq(server, m) for m in models]
    subs = [
        post(http, "forward", fwdbwd_body(m, s, [ce_datum(TOKENS[: 8 + 3 * i])], forward=True))
        for i, (m, s) in enumerate(zip(models, seqs, strict=True))
    ]
    pairs_before = server.scheduler.fused_sizes[2]
    gate.set()
    fused = [result(http, r.json()["request_id"]).json() for r in subs]
    assert server.scheduler.fused_sizes[2] > pairs_before
    for i, (m, out) in enumerate(zip(models, fused, strict=True)):
        alone = post(
            http, "forward",
            fwdbwd_body(m, _seq(server, m), [ce_datum(TOKENS[: 8 + 3 * i])], forward=True),
        )  # fmt: skip
        single = result(http, alone.json()["request_id"]).json()
        np.testing.assert_allclose(
            out["loss_fn_outputs"][0]["logprobs"]["data"],
            single["loss_fn_outputs"][0]["logprobs"]["data"],
            rtol=1e-5,
        )


def test_bookkeeping_stays_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Execution counts live with the remembered seq ids and are dropped with them."""
    monkeypatch.setattr(_scheduler, "MAX_REMEMBERED_SEQS", 3)
    sched = _scheduler.Scheduler(FutureTable(), seq_gap_timeout_s=5.0)
    sched.start()
    try:
        for seq in range(6):
            sched.submit(Job(f"r{seq}", "test", run=lambda: None, model_id="m", seq_id=seq),
                         register_next_seq=0)  # fmt: skip
        for _ in range(200):
            if sched.futures.get("r5") is not None and sched.futures.get("r5").state == "done":  # type: ignore[union-attr]
                break
            threading.Event().wait(0.01)
        assert sorted(sched.applied) == [("m", 3), ("m", 4), ("m", 5)]
        assert set(sched.applied.values()) == {1}
        assert not hasattr(sched, "idle_hooks")
    finally:
        sched.stop()


def test_refused_submission_uses_its_seq_id(
    http: httpx.Client, server: ServerHandle, model: str
) -> None:
    seq = _seq(server, model)
    unknown = fwdbwd_body(model, seq, [ce_datum(TOKENS)], loss_fn="no_such_loss")
    r = post(http, "forward_backward", unknown)
    assert r.status_code == 400
    assert r.json()["field"].endswith("loss_fn")
    # A NaN learning rate, as Python's json writes it (null): named as non-finite, id used.
    nan_lr = {"model_id": model, "seq_id": seq + 1, "adam_params": {"learning_rate": None}}
    r = post(http, "optim_step", nan_lr)
    assert r.status_code == 400
    assert "learning_rate" in r.json()["detail"]
    assert "finite" in r.json()["detail"]
    assert _seq(server, model) == seq + 2
    # The next request runs at once instead of waiting behind a gap that never closes.
    ok = post(http, "forward_backward", fwdbwd_body(model, seq + 2, [ce_datum(TOKENS)]))
    done = result(http, ok.json()["request_id"]).json()
    assert "loss:sum" in done["metrics"], done
    # A refused seq id stays used: a later body there (e.g. a client's gap-filling no-op) gets
    # a future that already failed with the first refusal, and nothing runs.
    again = post(http, "forward_backward", fwdbwd_body(model, seq, [ce_datum(TOKENS)]))
    assert again.status_code == 200, again.text
    failed = result(http, again.json()["request_id"]).json()
    assert failed["category"] == "user"
    assert "refused when first submitted" in failed["error"]
    assert "no_such_loss" in failed["error"]
    assert server.applied_count(model, seq) == 0


def test_far_ahead_seq_id_is_refused_and_the_model_keeps_serving(
    http: httpx.Client, server: ServerHandle, model: str
) -> None:
    seq = _seq(server, model)
    far = post(http, "optim_step", {"model_id": model, "seq_id": 10**9})
    assert far.status_code == 400
    body = far.json()
    assert body["field"] == "seq_id"
    assert f"seq_window={server.scheduler.seq_window}" in body["detail"]
    assert str(seq) in body["detail"]
    assert _seq(server, model) == seq  # nothing was buffered or skipped
    ok = post(http, "forward", fwdbwd_body(model, seq, [ce_datum(TOKENS)], forward=True))
    assert "loss:sum" in result(http, ok.json()["request_id"]).json()["metrics"]


def test_gap_skip_advances_only_to_the_lowest_waiting_id() -> None:
    with (
        start(seq_gap_timeout_s=3.0, long_poll_s=5.0) as srv,
        httpx.Client(base_url=srv.base_url, headers=KEY_HEADERS, timeout=30) as http,
    ):
        model = new_model(http, new_session(http))

        def fwd(seq: int) -> httpx.Response:
            return post(http, "forward", fwdbwd_body(model, seq, [ce_datum(TOKENS)], forward=True))

        early, later = fwd(2), fwd(4)  # seq 1 never comes; seq 3 comes after the skip
        dropped = result(http, early.json()["request_id"]).json()
        assert "seq_id 1" in dropped["error"]
        assert "never arrived" in dropped["error"]
        # The order moved to 3, not past 4: seq 3 is accepted and 4 runs after it.
        assert srv.scheduler.next_seq(model) == 3
        third = fwd(3)
        assert third.status_code == 200, third.text
        assert "loss:sum" in result(http, third.json()["request_id"]).json()["metrics"]
        assert "loss:sum" in result(http, later.json()["request_id"]).json()["metrics"]
        assert [srv.applied_count(model, s) for s in (2, 3, 4)] == [0, 1, 1]
