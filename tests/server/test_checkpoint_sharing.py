"""Checkpoint TTLs, publish/unpublish across tenants and ``copy_weights``, with the official SDK
0.38.0 against the local server; and its ``get_tokenizer()`` with the hub unreachable."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest

from tinkjax.server import ServerHandle

from .conftest import KEY_HEADERS, MICRO

tinker = pytest.importorskip("tinker")
types = tinker.types

OTHER_KEY = "tml-sharing-other"


@pytest.fixture(scope="module")
def service(sdk_env: None) -> Any:
    with tinker.ServiceClient() as client:
        yield client


@pytest.fixture(scope="module")
def other(sdk_env: None) -> Any:
    """A second tenant (another API key)."""
    with tinker.ServiceClient(api_key=OTHER_KEY) as client:
        yield client


@pytest.fixture(scope="module")
def tc(service: Any) -> Any:
    return service.create_lora_training_client(base_model=MICRO, rank=2, seed=5).result()


def _ids(rest: Any, run: str) -> list[str]:
    return [c.checkpoint_id for c in rest.list_checkpoints(run).result().checkpoints]


def test_expired_checkpoints_disappear_from_listings_and_loads(
    service: Any, tc: Any, server: ServerHandle
) -> None:
    rest = tinker.RestClient()
    short = tc.save_state("short", ttl_seconds=1).result().path
    kept = tc.save_state("kept", ttl_seconds=3600).result().path
    sampler = tc.save_weights_for_sampler("short-s", ttl_seconds=1).result().path
    assert {"weights/short", "weights/kept", "sampler_weights/short-s"} <= set(
        _ids(rest, tc.model_id)
    )
    time.sleep(1.2)
    assert "weights/short" not in _ids(rest, tc.model_id)
    assert "sampler_weights/short-s" not in _ids(rest, tc.model_id)
    assert "weights/kept" in _ids(rest, tc.model_id)
    assert short not in [
        c.tinker_path for c in rest.list_user_checkpoints(limit=1000).result().checkpoints
    ]
    with pytest.raises(tinker.NotFoundError):
        rest.get_weights_info_by_tinker_path(short).result()
    with pytest.raises(tinker.NotFoundError):
        rest.set_checkpoint_ttl_from_tinker_path(short, 3600).result()
    with pytest.raises(tinker.NotFoundError):
        service.create_training_client_from_state(short).result()
    with pytest.raises(tinker.NotFoundError):
        service.create_sampling_client(model_path=sampler).result()
    run = rest.get_training_run(tc.model_id).result()
    assert run.last_sampler_checkpoint is None or run.last_sampler_checkpoint.tinker_path != sampler
    # The files go with the next save (or the next start); a new save under the name works.
    tc.save_state("after-expiry").result()
    folder = server.data_dir / "checkpoints"
    assert not [p for p in folder.rglob("short@*")]
    assert tc.save_state("short").result().path == short
    # Setting a TTL, and removing it.
    rest.set_checkpoint_ttl_from_tinker_path(kept, 7200).result()
    got = {c.tinker_path: c for c in rest.list_checkpoints(tc.model_id).result().checkpoints}
    assert 7100 < got[kept].expires_at.timestamp() - time.time() <= 7200
    rest.set_checkpoint_ttl_from_tinker_path(kept, None).result()
    got = {c.tinker_path: c for c in rest.list_checkpoints(tc.model_id).result().checkpoints}
    assert got[kept].expires_at is None
    with pytest.raises(tinker.BadRequestError, match="ttl_seconds"):
        rest.set_checkpoint_ttl_from_tinker_path(kept, 0).result()


def _publish_url(tinker_path: str) -> str:
    p = types.ParsedCheckpointTinkerPath.from_tinker_path(tinker_path)
    return f"/api/v1/training_runs/{p.training_run_id}/checkpoints/{p.checkpoint_id}/publish"


def test_published_checkpoints_are_readable_by_other_tenants_until_unpublished(
    tc: Any, other: Any, http: Any
) -> None:
    rest = tinker.RestClient()
    their_rest = tinker.RestClient(api_key=OTHER_KEY)
    state = tc.save_state("shared").result().path
    sampler = tc.save_weights_for_sampler("shared-s").result().path
    for path in (state, sampler):
        with pytest.raises(tinker.NotFoundError):
            their_rest.get_weights_info_by_tinker_path(path).result()
    with pytest.raises(tinker.NotFoundError):
        other.create_training_client_from_state(state).result()
    rest.publish_checkpoint_from_tinker_path(state).result()
    rest.publish_checkpoint_from_tinker_path(sampler).result()
    # Publishing twice is a 409 (the official SDK retries a 409 for 5 minutes before raising
    # ConflictError, so it is checked over raw HTTP here).
    publish = _publish_url(state)
    assert http.post(publish, headers=KEY_HEADERS).status_code == 409
    assert their_rest.get_weights_info_by_tinker_path(state).result().base_model == MICRO
    theirs = other.create_training_client_from_state(state).result()
    assert theirs.get_info().model_data.model_name == MICRO
    their_sampler = other.create_sampling_client(model_path=sampler).result()
    out = their_sampler.sample(
        types.ModelInput.from_ints([1, 2, 3]), 1, types.SamplingParams(max_tokens=2, seed=0)
    ).result()
    assert len(out.sequences[0].tokens) == 2
    # Public means readable, not owned: the run, listing, deletion, TTL and publication stay
    # the owner's.
    with pytest.raises(tinker.NotFoundError):
        their_rest.list_checkpoints(tc.model_id).result()
    with pytest.raises(tinker.NotFoundError):
        their_rest.delete_checkpoint_from_tinker_path(state).result()
    with pytest.raises(tinker.NotFoundError):
        their_rest.unpublish_checkpoint_from_tinker_path(state).result()
    with pytest.raises(tinker.NotFoundError):
        their_rest.set_checkpoint_ttl_from_tinker_path(state, 3600).result()
    assert [
        c.public
        for c in rest.list_checkpoints(tc.model_id).result().checkpoints
        if c.tinker_path == state
    ] == [True]
    rest.unpublish_checkpoint_from_tinker_path(state).result()
    again = http.delete(publish, headers=KEY_HEADERS)
    assert again.status_code == 409
    assert "already is private" in again.text
    with pytest.raises(tinker.NotFoundError):
        their_rest.get_weights_info_by_tinker_path(state).result()
    with pytest.raises(tinker.NotFoundError):
        other.create_training_client_from_state(state).result()


def test_copy_weights_into_a_project_and_from_a_published_checkpoint(
    tc: Any, other: Any, monkeypatch: Any
) -> None:
    rest = tinker.RestClient()
    their_rest = tinker.RestClient(api_key=OTHER_KEY)
    state = tc.save_state("to-copy", ttl_seconds=3600, user_metadata={"step": "7"}).result().path
    copied = rest.copy_weights(state, "proj-archive", ttl_seconds=7200).result()
    parsed = types.ParsedCheckpointTinkerPath.from_tinker_path(copied)
    assert parsed.checkpoint_id == "weights/to-copy"
    assert parsed.training_run_id != tc.model_id
    (ck,) = rest.list_checkpoints(parsed.training_run_id).result().checkpoints
    assert ck.user_metadata == {"step": "7"}
    assert 7100 < ck.expires_at.timestamp() - time.time() <= 7200  # not the source's expiry
    assert rest.get_training_run(parsed.training_run_id).result().base_model == MICRO
    # The copy deletes independently and loads like the source.
    rest.delete_checkpoint_from_tinker_path(state).result()
    assert rest.get_weights_info_by_tinker_path(copied).result().lora_rank == 2
    # Another tenant copies only what is published; its copy is its own.
    sampler = tc.save_weights_for_sampler("to-copy-s").result().path
    with pytest.raises(tinker.NotFoundError):
        their_rest.copy_weights(sampler, "their-proj").result()
    rest.publish_checkpoint_from_tinker_path(sampler).result()
    theirs = their_rest.copy_weights(sampler, "their-proj").result()
    their_run = types.ParsedCheckpointTinkerPath.from_tinker_path(theirs).training_run_id
    assert their_rest.list_checkpoints(their_run).result().checkpoints[0].public is False
    with pytest.raises(tinker.NotFoundError):
        rest.list_checkpoints(their_run).result()
    # The ServiceClient form takes the project from TINKER_PROJECT_ID.
    monkeypatch.setenv("TINKER_PROJECT_ID", "proj-env")
    assert other.copy_weights(sampler).result().endswith("/sampler_weights/to-copy-s")
    with pytest.raises(tinker.BadRequestError, match="weights_access_token"):
        rest.copy_weights(sampler, "p", weights_access_token="tok").result()
    with pytest.raises(tinker.BadRequestError, match="ttl_seconds"):
        rest.copy_weights(sampler, "p", ttl_seconds=-1).result()


def test_copy_weights_retries_copy_once_and_session_destinations(
    http: Any, tc: Any, service: Any
) -> None:
    state = tc.save_state("idem").result().path
    key = str(uuid.uuid4())
    body = {"source_path": state, "destination_project_id": "p"}
    headers = {**KEY_HEADERS, "X-Idempotency-Key": key}
    first = http.post("/api/v1/copy_weights", json=body, headers=headers)
    again = http.post("/api/v1/copy_weights", json=body, headers=headers)
    assert first.status_code == 200, first.text
    assert again.json() == first.json()
    changed = http.post("/api/v1/copy_weights", json={**body, "ttl_seconds": 3600}, headers=headers)
    assert changed.status_code == 409
    # Into a slot of the caller's own session; a taken slot is a 409.
    session_id = tc.model_id.split(":train:")[0]
    slot = {"source_path": state, "session_id": session_id, "model_seq_id": 900}
    r = http.post("/api/v1/copy_weights", json=slot, headers=KEY_HEADERS)
    assert r.status_code == 200, r.text
    assert r.json()["tinker_path"] == f"tinker://{session_id}:train:900/weights/idem"
    assert http.post("/api/v1/copy_weights", json=slot, headers=KEY_HEADERS).status_code == 409
    taken = {**slot, "model_seq_id": int(tc.model_id.rsplit(":", 1)[1])}
    assert http.post("/api/v1/copy_weights", json=taken, headers=KEY_HEADERS).status_code == 409
    # The copy's run cannot be trained on.
    fb = http.post(
        "/api/v1/optim_step",
        json={
            "model_id": f"{session_id}:train:900",
            "seq_id": 1,
            "adam_params": {"learning_rate": 0.1},
        },
        headers=KEY_HEADERS,
    )
    assert fb.status_code == 404
    for bad, field in (
        ({"source_path": state}, "destination_project_id"),
        ({"source_path": state, "session_id": session_id}, "model_seq_id"),
        ({"source_path": "tinker://x/bogus/y", "destination_project_id": "p"}, "source_path"),
    ):
        r = http.post("/api/v1/copy_weights", json=bad, headers=KEY_HEADERS)
        assert r.status_code == 400, r.text
        assert r.json()["field"] == field
    other_session = {"source_path": state, "session_id": str(uuid.uuid4()), "model_seq_id": 0}
    assert (
        http.post("/api/v1/copy_weights", json=other_session, headers=KEY_HEADERS).status_code
        == 404
    )


def test_official_get_tokenizer_reads_the_server_folder_offline(tc: Any, monkeypatch: Any) -> None:
    from tinkjax.models import ByteTokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    info = tc.get_info()
    assert info.model_data.tokenizer_id.endswith("tokenizers/tinkjax-byte")
    hf = tc.get_tokenizer()
    bt = ByteTokenizer()
    texts = ["hello", "héllo wörld ∑ 😀", "<|begin_of_text|>user: hi<|endoftext|>", "", " a\n\tb "]
    for text in texts:
        assert hf.encode(text, add_special_tokens=False) == bt.encode(text)
        assert hf.encode(text) == bt.encode(text, add_special_tokens=True)
        ids = [*bt.encode(text, add_special_tokens=True), bt.eos_token_id, 0xC3]
        for skip in (True, False):
            assert hf.decode(ids, skip_special_tokens=skip) == bt.decode(
                ids, skip_special_tokens=skip
            )
    assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id) == (
        bt.bos_token_id, bt.eos_token_id, bt.pad_token_id,
    )  # fmt: skip
    assert sorted(hf.all_special_ids) == bt.all_special_ids
    assert len(hf) == bt.vocab_size
