"""API keys: which keys a server accepts, binding beyond loopback, the keys file, the tokens."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from tinkjax.server import load_api_keys, start, tenant_id
from tinkjax.server._auth import ArchiveTokens, KeyPolicy
from tinkjax.server._errors import ApiError


def test_tenant_id_is_a_hash_never_the_key() -> None:
    key = "tml-secret-key"
    assert tenant_id(key) == tenant_id(key)
    assert tenant_id(key) != tenant_id("tml-secret-kez")
    assert key not in tenant_id(key)
    assert len(tenant_id(key)) == 64


def test_open_policy_takes_any_well_formed_key_as_its_own_tenant() -> None:
    policy = KeyPolicy()
    assert policy.tenant({"x-api-key": "tml-a"}) != policy.tenant({"x-api-key": "tml-b"})
    for headers in ({}, {"x-api-key": ""}, {"x-api-key": "two words"}, {"x-api-key": "é"}):
        with pytest.raises(ApiError) as info:
            policy.tenant(headers)
        assert info.value.status == 401


def test_restricted_policy_takes_listed_keys_only() -> None:
    policy = KeyPolicy(["tml-a", "tml-b"])
    assert policy.tenant({"x-api-key": "tml-b"}) == tenant_id("tml-b")
    with pytest.raises(ApiError, match="not accepted") as info:
        policy.tenant({"x-api-key": "tml-c"})
    assert info.value.status == 401
    with pytest.raises(ValueError, match="empty list"):
        KeyPolicy([])
    with pytest.raises(ValueError, match="visible ASCII"):
        KeyPolicy(["has space"])


def test_keys_file_skips_comments_and_names_a_bad_line(tmp_path: Path) -> None:
    good = tmp_path / "keys"
    good.write_text("# team keys\n\ntml-alice\n  tml-bob  \n")
    assert load_api_keys(good) == ["tml-alice", "tml-bob"]
    bad = tmp_path / "bad"
    bad.write_text("tml-alice\ntml bob\n")
    with pytest.raises(ValueError, match=r"bad:2"):
        load_api_keys(bad)
    empty = tmp_path / "empty"
    empty.write_text("# nothing\n")
    with pytest.raises(ValueError, match="lists no API key"):
        load_api_keys(empty)


def test_archive_tokens_verify_for_the_signing_tenant_only() -> None:
    tokens = ArchiveTokens(ttl_s=60)
    token, expires = tokens.new("tenant-a", "run:train:0", "weights/s")
    assert expires > time.time() + 59
    assert tokens.verify(token, "tenant-a") == ("run:train:0", "weights/s")
    for owner in ("tenant-b", None):
        with pytest.raises(ApiError) as info:
            tokens.verify(token, owner)
        assert info.value.status == 404
    with pytest.raises(ApiError):  # another server (another secret) did not sign it
        ArchiveTokens(ttl_s=60).verify(token, "tenant-a")
    with pytest.raises(ValueError, match="archive_link_ttl_s"):
        ArchiveTokens(ttl_s=0)


def test_a_server_with_api_keys_answers_other_keys_401() -> None:
    with start(api_keys=["tml-alice"], long_poll_s=0.5) as srv:
        url = f"{srv.base_url}/api/v1/get_server_capabilities"
        assert httpx.get(url, headers={"X-API-Key": "tml-alice"}).status_code == 200
        r = httpx.get(url, headers={"X-API-Key": "tml-mallory"})
        assert r.status_code == 401
        assert r.json() == {
            "detail": "API key not accepted by this server", "type": "unauthorized", "status": 401
        }  # fmt: skip
        assert httpx.get(url).status_code == 401


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.1"])
def test_binding_beyond_loopback_needs_api_keys_or_insecure(host: str) -> None:
    with pytest.raises(ValueError, match="api_keys") as info:
        start(host=host)
    assert "insecure" in str(info.value)


def test_insecure_wildcard_bind_prints_a_usable_url(caplog: pytest.LogCaptureFixture) -> None:
    with start(host="0.0.0.0", insecure=True, long_poll_s=0.5) as srv:
        assert srv.base_url == f"http://127.0.0.1:{srv.port}"
        assert httpx.get(f"{srv.base_url}/api/v1/healthz").status_code == 200
    assert any("without API keys" in r.getMessage() for r in caplog.records)


def test_wildcard_bind_with_api_keys_needs_no_insecure() -> None:
    with start(host="0.0.0.0", api_keys=["tml-alice"], long_poll_s=0.5) as srv:
        r = httpx.get(
            f"{srv.base_url}/api/v1/get_server_capabilities", headers={"X-API-Key": "tml-alice"}
        )
        assert r.status_code == 200


def test_the_client_sees_a_refused_key_as_an_authentication_error() -> None:
    """(The official SDK's process-wide RestClient state outlives a server, so its side is
    checked by hand, not here: it raises tinker.AuthenticationError at once too.)"""
    from tinkjax.client import ServiceClient
    from tinkjax.errors import AuthenticationError

    with start(api_keys=["tml-alice"], long_poll_s=0.5) as srv:
        with (
            pytest.raises(AuthenticationError, match="not accepted"),
            ServiceClient(base_url=srv.base_url, api_key="tml-bob", heartbeat_interval=0) as sc,
        ):
            sc.get_server_capabilities()
        with ServiceClient(base_url=srv.base_url, api_key="tml-alice") as sc:
            assert sc.get_server_capabilities().supported_models
