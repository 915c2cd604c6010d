"""tinkjax's client getting weights out of the local backend: ``save_weights_external`` (plain
and age-encrypted), ``download_checkpoint`` of external weights (decrypted with pyrage),
``get_external_weights_urls``, TTLs, publish/unpublish and ``copy_weights`` (sync and async)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from safetensors.numpy import load_file

from tinkjax.client import RestClient, ServiceClient
from tinkjax.errors import ConflictError, NotFoundError
from tinkjax.types import AdamParams, Datum, ModelInput, parse_tinker_path

pyrage = pytest.importorskip("pyrage")

pytestmark = pytest.mark.timeout(180)

MODEL = "tinkjax/bytelm-micro"


def _datum(text: bytes) -> Datum:
    toks = list(text)
    return Datum(
        model_input=ModelInput.from_ints(toks[:-1]),
        loss_fn_inputs={"target_tokens": toks[1:], "weights": [1.0] * (len(toks) - 1)},
    )


def test_export_download_decrypt_and_manage(
    e2e_service: ServiceClient, local_server: Any, tmp_path: Path
) -> None:
    sc = e2e_service
    tc = sc.create_lora_training_client(MODEL, rank=4, seed=2).result(timeout=60)
    tc.forward_backward([_datum(b"export me, please")], "cross_entropy").result(timeout=60)
    tc.optim_step(AdamParams(learning_rate=1e-2)).result(timeout=60)
    identity = pyrage.x25519.Identity.generate()
    enc = tc.save_weights_external(
        "enc", ttl_seconds=3600, age_encryption_recipients=[str(identity.to_public())]
    ).result(timeout=60)
    plain = tc.save_weights_external("plain").result(timeout=60)
    assert enc.path is not None
    assert plain.path is not None
    assert enc.size_bytes is not None
    assert enc.size_bytes > 0
    sampler = tc.save_weights_for_sampler("ref").result(timeout=60).path
    reference, _ = local_server.backend.store.checkpoints.read(sampler)

    rest = sc.create_rest_client()
    links = rest.get_external_weights_urls(enc.path).result(timeout=30)
    assert sorted(links.urls) == ["adapter_config.json.age", "adapter_model.safetensors.age"]
    out = rest.download_checkpoint(enc.path, tmp_path / "dec", age_identity=str(identity)).result(
        timeout=60
    )
    assert {p.name: p.read_bytes() for p in out.iterdir()} == reference
    assert load_file(str(out / "adapter_model.safetensors"))
    raw = rest.download_checkpoint(enc.path, tmp_path / "raw").result(timeout=60)
    blobs = {p.name: p.read_bytes() for p in raw.iterdir()}
    assert (
        pyrage.decrypt(blobs["adapter_config.json.age"], [identity])
        == reference["adapter_config.json"]
    )
    got = rest.download_checkpoint(plain.path, tmp_path / "plain").result(timeout=60)
    assert {p.name: p.read_bytes() for p in got.iterdir()} == reference
    # A wrong key, or a plain export with a key, leaves nothing behind.
    with pytest.raises(Exception, match="decrypt"):
        rest.download_checkpoint(
            enc.path, tmp_path / "wrong", age_identity=str(pyrage.x25519.Identity.generate())
        ).result(timeout=60)
    with pytest.raises(Exception, match="not age-encrypted"):
        rest.download_checkpoint(plain.path, tmp_path / "wrong", age_identity=str(identity)).result(
            timeout=60
        )
    assert not (tmp_path / "wrong").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    with pytest.raises(FileExistsError):
        rest.download_checkpoint(plain.path, tmp_path / "plain").result(timeout=60)
    with pytest.raises(ValueError, match="external weights"):
        rest.get_external_weights_urls(sampler)

    # TTL, publish, unpublish (409 when nothing changes), copies.
    rest.set_checkpoint_ttl_from_tinker_path(plain.path, 7200).result(timeout=30)
    listed = {c.tinker_path: c for c in rest.list_checkpoints(tc.model_id).result().checkpoints}
    assert listed[plain.path].expires_at is not None
    assert listed[plain.path].checkpoint_type == "external"
    rest.set_checkpoint_ttl_from_tinker_path(plain.path, None).result(timeout=30)
    rest.publish_checkpoint_from_tinker_path(sampler).result(timeout=30)
    with pytest.raises(ConflictError):
        rest.publish_checkpoint_from_tinker_path(sampler).result(timeout=30)
    copy = sc.copy_weights(sampler, ttl_seconds=3600).result(timeout=30)
    parsed = parse_tinker_path(copy)
    assert parsed.checkpoint_id == "sampler_weights/ref"
    assert parsed.training_run_id.startswith(sc.session_id + ":train:")
    projected = rest.copy_weights(sampler, "proj").result(timeout=30)
    assert parse_tinker_path(projected).training_run_id.split(":train:")[0] != sc.session_id
    rest.unpublish_checkpoint_from_tinker_path(sampler).result(timeout=30)
    rest.delete_checkpoint_from_tinker_path(enc.path).result(timeout=30)
    with pytest.raises(NotFoundError):
        rest.get_external_weights_urls(enc.path).result(timeout=30)
    with pytest.raises(ValueError, match="TINKER_PROJECT_ID"):
        RestClient.from_transport(sc.transport).copy_weights(sampler)


def test_async_twins(e2e_service: ServiceClient, tmp_path: Path) -> None:
    sc = e2e_service

    async def main() -> tuple[Any, Any]:
        tc = await sc.create_lora_training_client_async(MODEL, rank=2, seed=0)
        saved = await (await tc.save_weights_external_async("a"))
        rest = sc.create_rest_client()
        links = await rest.get_external_weights_urls_async(saved.path)
        await rest.set_checkpoint_ttl_from_tinker_path_async(saved.path, 3600)
        state = (await tc.save_state("s")).path
        await rest.publish_checkpoint_from_tinker_path_async(state)
        await rest.unpublish_checkpoint_from_tinker_path_async(state)
        copied = await sc.copy_weights_async(state)
        return links, copied

    links, copied = asyncio.run(main())
    assert sorted(links.urls) == ["adapter_config.json", "adapter_model.safetensors"]
    assert copied.endswith("/weights/s")
