"""Bounded server memory: ended sessions free their models, a cap on live models, byte limits on
``user_metadata`` and telemetry (issue 10, defect 7)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tinkjax.server import ServerHandle
from tinkjax.server._store import InvalidNameError, Store
from tinkjax.server._validate import MAX_METADATA_BYTES, MAX_METADATA_ITEM_BYTES

from .conftest import MICRO, ce_datum, fwdbwd_body, new_model, new_session, post, result


def _ok(http: httpx.Client, r: httpx.Response) -> dict:
    assert r.status_code == 200, r.text
    done = result(http, r.json()["request_id"])
    assert done.status_code == 200, done.text
    assert "error" not in done.json(), done.text
    return dict(done.json())


def _wait_freed(server: ServerHandle, model_id: str) -> None:
    rt = server.backend.models.runtime(MICRO)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        live = {r.model_id for r in server.backend.models.records()}
        if model_id not in live and not rt.has_adapter(model_id):
            return
        time.sleep(0.05)
    raise AssertionError(f"model {model_id} still held after its session ended")


def test_finished_session_frees_models_and_load_recreates(
    server: ServerHandle, http: httpx.Client
) -> None:
    sid = new_session(http)
    mid = new_model(http, sid)
    _ok(http, post(http, "forward_backward", fwdbwd_body(mid, 1, [ce_datum([1, 2, 3, 4])])))
    saved = _ok(http, post(http, "save_weights", {"model_id": mid, "path": "keep", "seq_id": 2}))
    snap = _ok(
        http,
        post(
            http,
            "save_weights_for_sampler",
            {"model_id": mid, "seq_id": 3, "sampling_session_seq_id": 0},
        ),
    )
    sampler_id = snap["sampling_session_id"]
    assert sampler_id in server.backend.samplers._samplers

    r = post(http, f"sessions/{sid}/finish", {"reason": {"type": "success"}, "detail": None})
    assert r.status_code == 200, r.text
    _wait_freed(server, mid)
    assert sampler_id not in server.backend.samplers._samplers
    gone = post(http, "forward_backward", fwdbwd_body(mid, 4, [ce_datum([1, 2, 3])]))
    assert gone.status_code == 404
    assert "end of their session" in gone.json()["detail"]

    # The checkpoint survives: a new session loads it into a new model.
    sid2 = new_session(http)
    load = post(
        http,
        "load_weights",
        {"session_id": sid2, "model_seq_id": 0, "path": saved["path"], "optimizer": True},
    )
    loaded = _ok(http, load)
    assert loaded["model_id"] == f"{sid2}:train:0"
    assert server.backend.models.runtime(MICRO).has_adapter(loaded["model_id"])


def test_timed_out_session_frees_models(server: ServerHandle, http: httpx.Client) -> None:
    backend = server.backend
    sid = new_session(http)
    mid = new_model(http, sid)
    assert backend.session_timeout_s is not None
    assert sid not in backend.reap_sessions()  # fresh: heartbeat and request just now
    # Still in use by requests (no heartbeat needed) until both are older than the timeout.
    assert post(http, "session_heartbeat", {"session_id": sid}).status_code == 200
    assert sid in backend.reap_sessions(later_s=backend.session_timeout_s + 1)
    _wait_freed(server, mid)


def test_live_model_cap_refuses_with_429_naming_the_limit(
    server: ServerHandle, http: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = server.backend.models
    sid = new_session(http)
    limit = len(registry.records()) + 1
    monkeypatch.setattr(registry, "max_live_models", limit)
    first = new_model(http, sid, seq=0)
    body = {
        "session_id": sid, "model_seq_id": 1, "base_model": MICRO,
        "lora_config": {"rank": 4, "seed": 0}, "type": "create_model",
    }  # fmt: skip
    refused = post(http, "create_model", body)
    assert refused.status_code == 429, refused.text
    detail = refused.json()["detail"]
    assert "max_live_models" in detail
    assert f"limit is {limit}" in detail
    assert refused.json()["field"] == "max_live_models"
    assert f"{sid}:train:1" not in {r.model_id for r in registry.records()}
    # Freeing one makes room.
    _ok(http, post(http, "unload_model", {"model_id": first, "type": "unload_model"}))
    _wait_freed(server, first)
    again = post(http, "create_model", body)
    _ok(http, again)


def test_user_metadata_byte_limits(server: ServerHandle, http: httpx.Client) -> None:
    big = "x" * MAX_METADATA_ITEM_BYTES
    base = {"tags": [], "sdk_version": "test", "type": "create_session"}
    r = post(http, "create_session", {**base, "user_metadata": {"big": big}})
    assert r.status_code == 400, r.text
    assert r.json()["field"] == "user_metadata['big']"
    assert str(MAX_METADATA_ITEM_BYTES) in r.json()["detail"]
    n = MAX_METADATA_BYTES // (MAX_METADATA_ITEM_BYTES // 2) + 1
    many = {f"k{i}": "y" * (MAX_METADATA_ITEM_BYTES // 2) for i in range(n)}
    r = post(http, "create_session", {**base, "user_metadata": many})
    assert r.status_code == 400, r.text
    assert r.json()["field"] == "user_metadata"
    assert str(MAX_METADATA_BYTES) in r.json()["detail"]

    sid = new_session(http)
    r = post(
        http,
        "create_model",
        {"session_id": sid, "model_seq_id": 0, "base_model": MICRO, "user_metadata": {"b": big}},
    )
    assert r.status_code == 400, r.text
    assert "user_metadata" in r.json()["detail"]
    mid = new_model(http, sid, seq=1)
    r = post(
        http, "save_weights", {"model_id": mid, "path": "m", "seq_id": 1, "user_metadata": many}
    )
    assert r.status_code == 400, r.text
    assert r.json()["field"] == "user_metadata"
    ok = post(
        http,
        "save_weights",
        {"model_id": mid, "path": "m", "seq_id": 2, "user_metadata": {"note": "small"}},
    )
    # The refused save queued nothing; its seq_id 1 counts as used (the official SDK spent it),
    # so the next save runs at once as seq_id 2.
    _ok(http, ok)
    listed = http.get(f"/api/v1/training_runs/{mid}/checkpoints").json()["checkpoints"]
    assert [c["user_metadata"] for c in listed] == [{"note": "small"}]


def test_telemetry_byte_limits(tmp_path: Path, http: httpx.Client) -> None:
    event_bytes = 1000
    with Store(tmp_path, max_telemetry_bytes=100 * 1024) as store:
        tel = store.telemetry
        for i in range(300):
            tel.add("s", [{"event": "GENERIC_EVENT", "event_id": str(i), "pad": "p" * event_bytes}])
            assert tel._bytes <= tel.max_bytes
        kept = tel.query(limit=1000)
        assert 90 <= len(kept) < 105
        assert kept[-1]["event_id"] == "299"  # the newest are kept
        total = store.db.one("SELECT SUM(length(payload)) FROM telemetry")[0]  # type: ignore[index]
        assert total == tel._bytes <= 100 * 1024
        with pytest.raises(InvalidNameError, match="over the limit") as info:
            tel.add("s", [{"event": "GENERIC_EVENT"}, {"pad": "p" * tel.max_event_bytes}])
        assert info.value.field == "events[1]"
        assert len(tel.query(limit=1000)) == len(kept)  # nothing of the refused batch kept
    with Store(tmp_path, max_telemetry_bytes=100 * 1024) as again:
        assert again.telemetry._bytes == total  # the byte count survives a restart
    r = post(http, "telemetry", {"session_id": None, "events": [{"pad": "p" * 70_000}]})
    assert r.status_code == 400, r.text
    assert "events[0]" in r.text


def test_cached_weights_of_saved_samplers_are_bounded(
    server: ServerHandle, http: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    samplers = server.backend.samplers
    monkeypatch.setattr(samplers, "max_snapshots", 1)
    sid = new_session(http)
    mid = new_model(http, sid)
    ids = []
    for i, name in enumerate(("c1", "c2")):
        saved = _ok(
            http,
            post(
                http, "save_weights_for_sampler", {"model_id": mid, "path": name, "seq_id": 1 + i}
            ),
        )
        r = post(
            http,
            "create_sampling_session",
            {"session_id": sid, "sampling_session_seq_id": 10 + i, "model_path": saved["path"]},
        )
        assert r.status_code == 200, r.text
        ids.append(r.json()["sampling_session_id"])
    body = {
        "seq_id": 0, "num_samples": 1,
        "prompt": {"chunks": [{"type": "encoded_text", "tokens": [1, 2, 3]}]},
        "sampling_params": {"max_tokens": 3, "seed": 1, "temperature": 0.0},
    }  # fmt: skip
    first = [_ok(http, post(http, "asample", {**body, "sampling_session_id": s})) for s in ids]
    assert list(samplers._loaded) == [ids[1]]  # the older cached weights were dropped
    assert samplers._samplers[ids[0]].snapshot is None
    again = _ok(http, post(http, "asample", {**body, "sampling_session_id": ids[0]}))

    def samples(result: dict[str, Any]) -> list[dict[str, Any]]:  # sequence ids are per request
        return [{k: v for k, v in seq.items() if k != "sequence_id"} for seq in result["sequences"]]

    assert samples(again) == samples(first[0])  # read again from its checkpoint
    assert list(samplers._loaded) == [ids[0]]


def test_an_empty_telemetry_batch_into_an_empty_store_is_kept_as_nothing(tmp_path: Path) -> None:
    with Store(tmp_path) as store:
        store.telemetry.add("s", [])  # raised TypeError (MAX(id) of an empty table is NULL)
        assert store.telemetry.query(limit=10) == []
        store.telemetry.add("s", [{"event": "GENERIC_EVENT"}])
        assert len(store.telemetry.query(limit=10)) == 1
