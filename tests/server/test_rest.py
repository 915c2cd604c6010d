"""Checkpoints, REST resources, sessions, samplers, telemetry, archives, and restarts."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import httpx
import numpy as np
import pytest

from tinkjax.server import ServerHandle, start

from .conftest import (
    KEY_HEADERS,
    MICRO,
    ce_datum,
    fwdbwd_body,
    new_model,
    new_session,
    post,
    result,
)

TOKENS = list(b"checkpoints keep their promises")


def _train_step(http: httpx.Client, server: ServerHandle, model: str) -> float:
    seq = server.scheduler.next_seq(model)
    fb = post(http, "forward_backward", fwdbwd_body(model, seq, [ce_datum(TOKENS)]))
    opt = post(http, "optim_step", {"model_id": model, "seq_id": seq + 1,
                                    "adam_params": {"learning_rate": 0.05}})  # fmt: skip
    loss = result(http, fb.json()["request_id"]).json()["metrics"]["loss:sum"]
    assert "grad_norm:mean" in result(http, opt.json()["request_id"]).json()["metrics"]
    return float(loss)


def _forward_lp(http: httpx.Client, server: ServerHandle, model: str) -> np.ndarray:
    seq = server.scheduler.next_seq(model)
    r = post(http, "forward", fwdbwd_body(model, seq, [ce_datum(TOKENS)], forward=True))
    out = result(http, r.json()["request_id"]).json()
    return np.asarray(out["loss_fn_outputs"][0]["logprobs"]["data"])


def _save(http: httpx.Client, server: ServerHandle, path: str, body: dict) -> str:
    seq = server.scheduler.next_seq(body["model_id"])
    r = post(http, path, {**body, "seq_id": seq})
    assert r.status_code == 200, r.text
    out = result(http, r.json()["request_id"]).json()
    assert "error" not in out, out
    return str(out.get("path") or out.get("sampling_session_id"))


def test_checkpoints_rest_archive_and_restart(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with (
        start(data_dir=data_dir, long_poll_s=2.0) as srv,
        httpx.Client(
            base_url=srv.base_url, headers=KEY_HEADERS, timeout=60, follow_redirects=False
        ) as http,
    ):
        session = new_session(http)
        model = new_model(http, session, rank=4, train_unembed=False)
        _train_step(http, srv, model)
        state_path = _save(http, srv, "save_weights", {"model_id": model, "path": "s1"})
        sampler_path = _save(http, srv, "save_weights_for_sampler",
                             {"model_id": model, "path": "p1"})  # fmt: skip
        assert state_path == f"tinker://{model}/weights/s1"
        lp_saved = _forward_lp(http, srv, model)
        # overwrite=false refuses to replace
        dup = post(http, "save_weights", {"model_id": model, "path": "s1",
                                          "seq_id": srv.scheduler.next_seq(model)})  # fmt: skip
        assert "already exists" in result(http, dup.json()["request_id"]).json()["error"]

        run = http.get(f"/api/v1/training_runs/{model}").json()
        assert run["base_model"] == MICRO
        assert run["lora_rank"] == 4
        assert run["is_lora"]
        assert run["last_checkpoint"]["tinker_path"] == state_path
        info = post(http, "weights_info", {"tinker_path": sampler_path}).json()
        assert info["base_model"] == MICRO
        assert info["lora_rank"] == 4
        assert info["train_unembed"] is False
        assert info["train_attn"] is True
        assert session in http.get("/api/v1/sessions").json()["sessions"]
        assert http.get(f"/api/v1/sessions/{session}").json()["training_run_ids"] == [model]
        users = http.get("/api/v1/checkpoints").json()["checkpoints"]
        assert {c["tinker_path"] for c in users} >= {state_path, sampler_path}

        # archive: 302 to a URL that streams a tar.gz with the PEFT files
        redirect = http.get(f"/api/v1/training_runs/{model}/checkpoints/sampler_weights/p1/archive")
        assert redirect.status_code == 302
        archive = http.get(redirect.headers["location"])
        assert archive.status_code == 200
        with tarfile.open(fileobj=io.BytesIO(archive.content), mode="r:gz") as tar:
            names = sorted(tar.getnames())
            config = json.load(tar.extractfile("adapter_config.json"))  # type: ignore[arg-type]
        assert names == ["adapter_config.json", "adapter_model.safetensors"]
        assert config["r"] == 4
        assert config["lora_alpha"] == 32
        assert config["base_model_name_or_path"] == MICRO
        state_archive = http.get(
            f"/api/v1/training_runs/{model}/checkpoints/weights/s1/archive", follow_redirects=True
        )
        with tarfile.open(fileobj=io.BytesIO(state_archive.content), mode="r:gz") as tar:
            assert tar.getnames() == ["state.safetensors"]

        # telemetry intake and query
        event = {"event": "GENERIC_EVENT", "event_id": "e1", "event_session_index": 0,
                 "severity": "INFO", "timestamp": "2026-01-01T00:00:00+00:00",
                 "event_name": "user_error", "event_data": {"x": 1}}  # fmt: skip
        r = post(http, "telemetry", {"events": [event], "platform": "Linux", "sdk_version": "t",
                                     "session_id": session, "process_uuid": "p"})  # fmt: skip
        assert r.json() == {"status": "accepted"}
        events = http.get("/api/v1/telemetry/events", params={"session_id": session}).json()
        assert [e["event_id"] for e in events["events"]] == ["e1"]

        # delete a checkpoint
        extra = _save(http, srv, "save_weights", {"model_id": model, "path": "tmp"})
        d = http.delete(f"/api/v1/training_runs/{model}/checkpoints/weights/tmp")
        assert d.status_code == 200
        listed = http.get(f"/api/v1/training_runs/{model}/checkpoints").json()["checkpoints"]
        assert extra not in {c["tinker_path"] for c in listed}
        assert post(http, "weights_info", {"tinker_path": extra}).status_code == 404

    # A restarted server on the same data dir lists and loads the checkpoints.
    with (
        start(data_dir=data_dir, long_poll_s=2.0) as srv2,
        httpx.Client(base_url=srv2.base_url, headers=KEY_HEADERS, timeout=60) as http,
    ):
        listed = http.get(f"/api/v1/training_runs/{model}/checkpoints").json()["checkpoints"]
        assert [c["checkpoint_id"] for c in listed] == ["weights/s1", "sampler_weights/p1"]
        session2 = new_session(http)
        load = post(http, "load_weights", {"session_id": session2, "model_seq_id": 0,
                                           "path": state_path, "optimizer": True})  # fmt: skip
        loaded = result(http, load.json()["request_id"]).json()
        assert loaded == {"path": state_path, "model_id": f"{session2}:train:0",
                          "type": "load_weights"}  # fmt: skip
        new_id = loaded["model_id"]
        info = post(http, "get_info", {"model_id": new_id}).json()
        assert info["lora_rank"] == 4
        assert info["model_data"]["model_name"] == MICRO
        np.testing.assert_allclose(_forward_lp(http, srv2, new_id), lp_saved, rtol=1e-5)
        # Adam state came back too: the next step is step 2.
        seq = srv2.scheduler.next_seq(new_id)
        post(http, "forward_backward", fwdbwd_body(new_id, seq, [ce_datum(TOKENS)]))
        opt = post(http, "optim_step", {"model_id": new_id, "seq_id": seq + 1})
        assert result(http, opt.json()["request_id"]).json()["metrics"]["step:max"] == 2.0
        # sampling from saved sampler weights after the restart
        s = post(http, "create_sampling_session", {"session_id": session2,
                                                   "sampling_session_seq_id": 0,
                                                   "model_path": sampler_path})  # fmt: skip
        sid = s.json()["sampling_session_id"]
        assert http.get(f"/api/v1/samplers/{sid}").json() == {
            "sampler_id": sid, "base_model": MICRO, "model_path": sampler_path
        }  # fmt: skip
        smp = post(http, "asample", {"sampling_session_id": sid, "seq_id": 0, "num_samples": 2,
                                     "prompt": {"chunks": [{"type": "encoded_text",
                                                            "tokens": TOKENS[:4]}]},
                                     "sampling_params": {"max_tokens": 5, "seed": 1}})  # fmt: skip
        assert len(smp.json()["sample_sequence_ids"]) == 2
        out = result(http, smp.json()["request_id"]).json()
        assert [len(q["tokens"]) for q in out["sequences"]] <= [5, 5]
        assert all(len(q["logprobs"]) == len(q["tokens"]) for q in out["sequences"])


def test_unload_model(http: httpx.Client, server: ServerHandle) -> None:
    model = new_model(http, new_session(http))
    r = post(http, "unload_model", {"model_id": model, "type": "unload_model"})
    assert result(http, r.json()["request_id"]).json()["model_id"] == model
    assert post(http, "get_info", {"model_id": model}).status_code == 404
    again = post(http, "forward", fwdbwd_body(model, 1, [ce_datum(TOKENS)], forward=True))
    assert again.status_code == 404


@pytest.mark.parametrize(
    ("loss_fn", "config"),
    [("importance_sampling", None), ("ppo", {"clip_low_threshold": 0.9}), ("cispo", None),
     ("dro", {"beta": 0.1})],
)  # fmt: skip
def test_rl_losses_over_http(
    http: httpx.Client, server: ServerHandle, loss_fn: str, config: dict | None
) -> None:
    model = new_model(http, new_session(http))
    n = len(TOKENS) - 1
    datum = ce_datum(TOKENS)
    datum["loss_fn_inputs"] = {
        "target_tokens": datum["loss_fn_inputs"]["target_tokens"],
        "logprobs": {"data": [-5.0] * n, "dtype": "float32", "shape": [n]},
        "advantages": {"data": [1.0] * n, "dtype": "float32", "shape": [n]},
    }
    r = post(http, "forward_backward", fwdbwd_body(model, 1, [datum], loss_fn=loss_fn,
                                                   config=config))  # fmt: skip
    assert r.status_code == 200, r.text
    out = result(http, r.json()["request_id"]).json()
    lp = np.asarray(out["loss_fn_outputs"][0]["logprobs"]["data"])
    el = np.asarray(out["loss_fn_outputs"][0]["elementwise_loss"]["data"])
    assert out["metrics"]["loss:sum"] == pytest.approx(float(el.sum()), rel=1e-5)
    if loss_fn == "importance_sampling":
        np.testing.assert_allclose(el, -np.exp(lp + 5.0), rtol=1e-4)


def test_gspo_and_two_d_targets(http: httpx.Client, server: ServerHandle) -> None:
    model = new_model(http, new_session(http))
    n = len(TOKENS) - 1
    base = ce_datum(TOKENS)
    gspo = {
        "model_input": base["model_input"],
        "loss_fn_inputs": {
            "target_tokens": base["loss_fn_inputs"]["target_tokens"],
            "logprobs": {"data": [-5.0] * n, "dtype": "float32", "shape": [n]},
            "advantages": {"data": [0.5] * n, "dtype": "float32", "shape": [n]},
            "sequence_ratio_mask": {"data": [1.0] * n, "dtype": "float32", "shape": [n]},
        },
    }
    r = post(http, "forward", fwdbwd_body(model, 1, [gspo], forward=True, loss_fn="gspo"))
    out = result(http, r.json()["request_id"]).json()
    assert np.isfinite(out["metrics"]["loss:sum"])
    # 2-D [T, K] targets: logprobs come back [T, K]; row k of K=2 holds the same token twice.
    targets = [[t, t] for t in TOKENS[1:]]
    two_d = {
        "model_input": base["model_input"],
        "loss_fn_inputs": {
            "target_tokens": {
                "data": [t for row in targets for t in row],
                "dtype": "int64",
                "shape": [n, 2],
            },
            "weights": {"data": [1.0, 0.0] * n, "dtype": "float32", "shape": [n, 2]},
        },
    }
    r = post(http, "forward", fwdbwd_body(model, 2, [two_d, base], forward=True))
    out = result(http, r.json()["request_id"]).json()
    lp2 = out["loss_fn_outputs"][0]["logprobs"]
    assert lp2["shape"] == [n, 2]
    lp2_arr = np.asarray(lp2["data"]).reshape(n, 2)
    lp1 = np.asarray(out["loss_fn_outputs"][1]["logprobs"]["data"])
    np.testing.assert_allclose(lp2_arr[:, 0], lp1, rtol=1e-5)
    np.testing.assert_allclose(lp2_arr[:, 1], lp1, rtol=1e-5)


def test_old_snapshot_samplers_are_evicted(
    http: httpx.Client, server: ServerHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server.backend.samplers, "max_snapshots", 1)
    session = new_session(http)
    model = new_model(http, session)
    ids = [
        _save(
            http,
            server,
            "save_weights_for_sampler",
            {"model_id": model, "sampling_session_seq_id": i},
        )
        for i in range(2)
    ]
    assert ids == [f"{session}:sample:0", f"{session}:sample:1"]
    body = {"num_samples": 1, "sampling_params": {"max_tokens": 2},
            "prompt": {"chunks": [{"type": "encoded_text", "tokens": [1, 2]}]}}  # fmt: skip
    gone = post(http, "asample", {**body, "sampling_session_id": ids[0]})
    assert gone.status_code == 404
    assert "snapshot" in gone.json()["detail"]
    ok = post(http, "asample", {**body, "sampling_session_id": ids[1]})
    assert len(result(http, ok.json()["request_id"]).json()["sequences"]) == 1
