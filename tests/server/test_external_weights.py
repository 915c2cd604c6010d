"""Getting weights out, with the official SDK 0.38.0 against the local server:
``save_weights_external`` (age-encrypted with pyrage, or plain), ``get_external_weights_urls``
(signed, expiring links), checkpoint TTLs, publish/unpublish across tenants and ``copy_weights``."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

import pytest
from safetensors.numpy import load as load_safetensors

from tinkjax.server import ServerHandle

from .conftest import MICRO

tinker = pytest.importorskip("tinker")
pyrage = pytest.importorskip("pyrage")
types = tinker.types

OTHER_KEY = "tml-other-tenant"


def _datum(tokens: list[int]) -> Any:
    return types.Datum(
        model_input=types.ModelInput.from_ints(tokens[:-1]),
        loss_fn_inputs={"target_tokens": tokens[1:], "weights": [1.0] * (len(tokens) - 1)},
    )


@pytest.fixture(scope="module")
def service(sdk_env: None) -> Any:
    with tinker.ServiceClient() as client:
        yield client


@pytest.fixture(scope="module")
def trained(service: Any) -> Any:
    """A model one step away from its initial adapter (LoRA B no longer zero)."""
    tc = service.create_lora_training_client(base_model=MICRO, rank=4, seed=1)
    tc = tc.result()
    tc.forward_backward([_datum(list(b"weights out, please"))], "cross_entropy").result()
    tc.optim_step(types.AdamParams(learning_rate=1e-2)).result()
    return tc


def _get(url: str) -> tuple[int, bytes]:
    """A plain GET with no API key, as the cookbook downloads a signed URL."""
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _reference_files(server: ServerHandle, tc: Any, name: str) -> dict[str, bytes]:
    """The PEFT files of an unencrypted sampler checkpoint saved at the same point."""
    path = tc.save_weights_for_sampler(name).result().path
    files, _ = server.backend.store.checkpoints.read(path)
    return files


def test_encrypted_export_decrypts_to_the_adapter_weights(
    trained: Any, server: ServerHandle
) -> None:
    identity = pyrage.x25519.Identity.generate()
    other = pyrage.x25519.Identity.generate()
    recipients = [str(identity.to_public()), str(other.to_public())]
    saved = trained.save_weights_external(
        "enc", ttl_seconds=3600, age_encryption_recipients=recipients
    ).result()
    assert saved.path == f"tinker://{trained.model_id}/external_weights/enc"
    reference = _reference_files(server, trained, "enc-ref")
    rest = tinker.RestClient()
    links = rest.get_external_weights_urls(saved.path).result()
    assert sorted(links.urls) == ["adapter_config.json.age", "adapter_model.safetensors.age"]
    assert 0 < (links.expires.timestamp() - time.time()) <= 900 + 2
    for name, url in links.urls.items():
        status, blob = _get(url)
        assert status == 200, blob
        plain_name = name.removesuffix(".age")
        assert blob != reference[plain_name]  # stored encrypted
        for key in (identity, other):  # either recipient reads it
            assert pyrage.decrypt(blob, [key]) == reference[plain_name]
        with pytest.raises(pyrage.DecryptError):
            pyrage.decrypt(blob, [pyrage.x25519.Identity.generate()])
    tensors = load_safetensors(
        pyrage.decrypt(_get(links.urls["adapter_model.safetensors.age"])[1], [identity])
    )
    assert tensors
    assert any(k.endswith("lora_B.weight") for k in tensors)
    assert any(abs(v).max() > 0 for k, v in tensors.items() if k.endswith("lora_B.weight"))
    config = json.loads(pyrage.decrypt(_get(links.urls["adapter_config.json.age"])[1], [identity]))
    assert config["r"] == 4
    listed = {
        c.checkpoint_id: c for c in rest.list_checkpoints(trained.model_id).result().checkpoints
    }
    ck = listed["external_weights/enc"]
    assert ck.checkpoint_type == "external"
    assert ck.expires_at is not None
    assert ck.tinker_path == saved.path
    assert ck.size_bytes == sum(len(_get(u)[1]) for u in links.urls.values())


def test_plain_export_and_link_rules(trained: Any, server: ServerHandle, monkeypatch: Any) -> None:
    path = trained.save_weights_external("plain").result().path
    reference = _reference_files(server, trained, "plain-ref")
    rest = tinker.RestClient()
    links = rest.get_external_weights_urls(path).result()
    assert {n: _get(u)[1] for n, u in links.urls.items()} == reference
    url = links.urls["adapter_model.safetensors"]
    token_part = url.rsplit("/", 1)[0]
    # A link opens only its own file; an edited token is refused.
    assert _get(f"{token_part}/adapter_config.json")[0] == 404
    head, sig = token_part.rsplit(".", 1)
    assert _get(f"{head}.{sig[:-2]}xx/adapter_model.safetensors")[0] == 404
    # Another tenant's key is refused; the owner's or none is fine.
    other = urllib.request.Request(url, headers={"X-API-Key": OTHER_KEY})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(other, timeout=30)
    assert refused.value.code == 404
    # Past its expiry a link is refused with a 403 that says so.
    from tinkjax.server import _links

    later = time.time() + 10_000
    monkeypatch.setattr(_links, "_now", lambda: later)
    status, body = _get(url)
    assert status == 403
    assert b"expired" in body
    monkeypatch.undo()
    assert _get(url)[0] == 200
    # A deleted checkpoint's links are gone, and so are its URLs.
    rest.delete_checkpoint_from_tinker_path(path).result()
    assert _get(url)[0] == 404
    with pytest.raises(tinker.NotFoundError):
        rest.get_external_weights_urls(path).result()


def test_bad_exports_are_refused_and_the_model_carries_on(service: Any, trained: Any) -> None:
    with pytest.raises(tinker.BadRequestError, match="age_encryption_recipients"):
        trained.save_weights_external("bad", age_encryption_recipients=["age1notakey"]).result()
    too_many = [str(pyrage.x25519.Identity.generate().to_public()) for _ in range(11)]
    with pytest.raises(tinker.BadRequestError, match="at most 10"):
        trained.save_weights_external("bad", age_encryption_recipients=too_many).result()
    with pytest.raises(tinker.BadRequestError, match="path"):
        trained.save_weights_external("../x").result()
    # The refused requests used their seq ids: the next ones run.
    first = trained.save_weights_external("dup").result().path
    with pytest.raises(tinker.RequestFailedError, match="already exists"):
        trained.save_weights_external("dup").result()
    assert trained.save_state("after-bad").result().path.endswith("/weights/after-bad")
    rest = tinker.RestClient()
    # An external checkpoint is downloaded, not loaded or sampled; and only it has URLs.
    with pytest.raises(tinker.BadRequestError, match="external_weights"):
        service.create_sampling_client(model_path=first).result()
    state = f"tinker://{trained.model_id}/weights/after-bad"
    with pytest.raises(ValueError, match="external weights"):
        rest.get_external_weights_urls(state)


def test_cookbook_download_flow_with_temporary_export(
    service: Any, trained: Any, tmp_path: Any
) -> None:
    """What tinker_cookbook.weights.download does for a weights/ path: load it into a new run,
    export encrypted with a TTL, sign, renew the TTL, download, decrypt, delete the export."""
    state = trained.save_state("for-download").result().path
    identity = pyrage.x25519.Identity.generate()
    tc = service.create_training_client_from_state(state).result()
    export = (
        tc.save_weights_external(
            "download", ttl_seconds=3600, age_encryption_recipients=[str(identity.to_public())]
        )
        .result()
        .path
    )
    rest = tinker.RestClient()
    links = rest.get_external_weights_urls(export).result()
    rest.set_checkpoint_ttl_from_tinker_path(export, 3600).result()
    out = {}
    for name, url in links.urls.items():
        out[name.removesuffix(".age")] = pyrage.decrypt(_get(url)[1], [identity])
    want = _reference_files_from(trained)
    assert load_safetensors(out["adapter_model.safetensors"]).keys() == want.keys()
    for k, v in load_safetensors(out["adapter_model.safetensors"]).items():
        assert (v == want[k]).all(), k
    rest.delete_checkpoint_from_tinker_path(export).result()
    assert all(
        c.tinker_path != export for c in rest.list_checkpoints(tc.model_id).result().checkpoints
    )


def _reference_files_from(tc: Any) -> dict[str, Any]:
    path = tc.save_weights_external("ref-plain").result().path
    links = tinker.RestClient().get_external_weights_urls(path).result()
    return load_safetensors(_get(links.urls["adapter_model.safetensors"])[1])
