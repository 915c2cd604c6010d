"""ServiceClient session lifecycle against the canned service."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest

from tinkjax.client import ServiceClient
from tinkjax.errors import ConfigurationError

from .conftest import API_KEY
from .fake import FakeTinker


def test_session_request_heartbeats_and_finish_on_with(fake: FakeTinker) -> None:
    with ServiceClient(
        {"team": "x"},
        project_id="p1",
        display_name="run",
        tags=["a"],
        base_url="http://fake.test",
        api_key=API_KEY,
        http_transport=fake.transport(),
        heartbeat_interval=0.01,
    ) as sc:
        assert sc.session_id == "sess-1"
        deadline = time.monotonic() + 10
        while fake.heartbeats < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    assert fake.heartbeats >= 2
    assert fake.session_request["user_metadata"] == {"team": "x"}
    assert fake.session_request["project_id"] == "p1"
    assert fake.session_request["tags"] == ["a"]
    assert fake.session_request["display_name"] == "run"
    assert fake.finished == [
        {"session_id": "sess-1", "reason": {"type": "success"}, "detail": None}
    ]
    count = fake.heartbeats
    time.sleep(0.05)
    assert fake.heartbeats == count  # heartbeats stopped with the session
    with pytest.raises(RuntimeError, match="closed"):
        sc.create_lora_training_client("m")


def test_errored_block_finishes_with_detail_and_masks_key(fake: FakeTinker) -> None:
    with (
        pytest.raises(KeyError),
        ServiceClient(
            base_url="http://fake.test",
            api_key=API_KEY,
            http_transport=fake.transport(),
            heartbeat_interval=0,
        ),
    ):
        raise KeyError(f"boom {API_KEY}")
    assert fake.finished[0]["reason"] == {"type": "errored"}
    assert "boom ***" in fake.finished[0]["detail"]


def _client(fake: FakeTinker) -> ServiceClient:
    sc = ServiceClient(
        base_url="http://fake.test",
        api_key=API_KEY,
        http_transport=fake.transport(),
        heartbeat_interval=0,
        max_retries=1,
    )
    assert sc.session_id == "sess-1"
    return sc


# the server is gone (every connection refused), never answers, or no longer knows the session
GONE = [
    {"drop": True, "times": 100},
    {"hang": True, "times": 100},
    {"status": 404},
]


@pytest.mark.parametrize("fault", GONE, ids=["gone", "silent", "404"])
def test_close_logs_when_the_session_cannot_be_finished(
    fake: FakeTinker, caplog: pytest.LogCaptureFixture, fault: dict[str, Any]
) -> None:
    sc = _client(fake)
    fake.fault(r"/finish$", **fault)
    with caplog.at_level(logging.WARNING, logger="tinkjax.client"):
        sc.close()
    assert sc.transport.closed
    [record] = [r for r in caplog.records if "could not finish session" in r.message]
    assert "sess-1" in record.message
    assert API_KEY not in record.message
    sc.close()  # idempotent
    assert not fake.finished


@pytest.mark.parametrize("fault", GONE, ids=["gone", "silent", "404"])
def test_a_failing_close_never_replaces_the_body_exception(
    fake: FakeTinker, caplog: pytest.LogCaptureFixture, fault: dict[str, Any]
) -> None:
    with caplog.at_level(logging.WARNING, logger="tinkjax.client"):
        sc = _client(fake)
        fake.fault(r"/finish$", **fault)
        with pytest.raises(ValueError, match="the body's own error"), sc:
            raise ValueError("the body's own error")

        sc = _client(fake)

        async def main() -> None:
            async with sc:
                raise ValueError("the async body's own error")

        fake.fault(r"/finish$", **fault)
        with pytest.raises(ValueError, match="the async body's own error"):
            asyncio.run(main())
    assert len([r for r in caplog.records if "could not finish session" in r.message]) == 2


def test_factory_argument_checks(service: ServiceClient) -> None:
    with pytest.raises(ConfigurationError, match="train_mlp"):
        service.create_lora_training_client(
            "m", train_mlp=False, train_attn=False, train_unembed=False
        )
    with pytest.raises(ConfigurationError, match="exactly one"):
        service.create_sampling_client()
    with pytest.raises(ConfigurationError, match="tinker://"):
        service.create_sampling_client(model_path="/local/path")


def test_session_creation_failure_surfaces_on_first_call(fake: FakeTinker) -> None:
    fake.fault(r"/create_session$", status=401, body=b'{"detail": "bad key"}')
    sc = ServiceClient(
        base_url="http://fake.test",
        api_key=API_KEY,
        http_transport=fake.transport(),
        heartbeat_interval=0,
    )
    from tinkjax.errors import AuthenticationError

    with pytest.raises(AuthenticationError):
        sc.create_lora_training_client("m").result(timeout=30)
    sc.close()  # nothing to finish
    assert fake.finished == []


def test_tokenizers(service: ServiceClient, monkeypatch: pytest.MonkeyPatch) -> None:
    tc = service.create_lora_training_client("tinkjax/bytelm-micro").result(timeout=30)
    tok = tc.get_tokenizer()
    assert tok.decode(tok.encode("héllo")) == "héllo"
    from tinkjax.client import _tokenizer

    monkeypatch.setattr(_tokenizer.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match="transformers"):
        _tokenizer.load_tokenizer("Qwen/Qwen3-8B")
    samp = service.create_sampling_client(base_model="tinkjax/bytelm-micro").result(timeout=30)
    assert samp.get_base_model() == "tinkjax/bytelm-micro"
    by_path = service.create_sampling_client(
        model_path="tinker://sess-1:train:0/sampler_weights/x"
    ).result(timeout=30)
    assert by_path.get_base_model() == "tinkjax/bytelm-micro"  # asked /samplers/{id}
