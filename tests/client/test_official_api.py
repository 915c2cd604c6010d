"""The official SDK's names that tinkjax's client offers beside its own (issue 12, point 5):
``APIFuture.coroutine``, ``TrainingClient.create_sampling_client_async``,
``SamplingClient.create``/sampler handles/``on_queue_state_change``, ``load_state``'s
``weights_access_token``, ``access_scope`` on the REST getters, and the types' additions."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from typing import Any

import pytest

from tinkjax.client import SamplingClient, ServiceClient
from tinkjax.errors import ConfigurationError, WireFormatError
from tinkjax.types import (
    ModelInput,
    ParsedCheckpointTinkerPath,
    PromptProvenanceSpan,
    SampledProvenanceSpan,
    SamplingParams,
    parse_tinker_path,
)

MICRO = "tinkjax/bytelm-micro"
PROMPT = ModelInput.from_ints(list(b"the"))


def test_coroutine_awaits_the_future(e2e_service: ServiceClient) -> None:
    sampler = e2e_service.create_sampling_client(base_model=MICRO).result(timeout=60)

    async def main() -> Any:
        task = asyncio.create_task(
            sampler.sample(PROMPT, 2, SamplingParams(max_tokens=2)).coroutine()
        )
        return await task

    out = asyncio.run(main())
    assert len(out.sequences) == 2


def test_training_client_create_sampling_client_async(e2e_service: ServiceClient) -> None:
    tc = e2e_service.create_lora_training_client(MICRO, rank=2).result(timeout=60)
    path = tc.save_weights_for_sampler("compat").result(timeout=60).path
    sampler = asyncio.run(tc.create_sampling_client_async(path))
    assert isinstance(sampler, SamplingClient)
    assert sampler.model_path == path
    assert len(sampler.sample(PROMPT, 1, SamplingParams(max_tokens=2)).result(60).sequences) == 1


def test_sampling_client_create_and_handles(e2e_service: ServiceClient) -> None:
    session = e2e_service.session
    first = SamplingClient.create(session, base_model=MICRO).result(timeout=60)
    again = SamplingClient.create(session, sampling_session_id=first.sampling_session_id).result(60)
    assert again.get_base_model() == MICRO
    with pytest.raises(ConfigurationError):
        SamplingClient.create(session, base_model=MICRO, sampling_session_id="x")

    handle = first.get_sampler_handle()
    state = json.loads(base64.urlsafe_b64decode(handle))
    assert state["sampling_session_id"] == first.sampling_session_id
    assert e2e_service.config.api_key not in handle  # no credentials in a handle
    clone = SamplingClient.from_sampler_handle(handle, api_key=e2e_service.config.api_key)
    assert clone.sampling_session_id == first.sampling_session_id
    params = SamplingParams(max_tokens=4, seed=7, temperature=1.0)
    a = first.sample(PROMPT, 1, params).result(timeout=60).sequences[0].tokens
    b = clone.sample(PROMPT, 1, params).result(timeout=60).sequences[0].tokens
    assert a == b  # the same sampler, the same seed
    for bad in ("not base64!", base64.urlsafe_b64encode(b'{"x": 1}').decode()):
        with pytest.raises(ValueError, match="sampler handle"):
            SamplingClient.from_sampler_handle(bad)


def test_on_queue_state_change_warns_once_a_minute(
    e2e_service: ServiceClient, caplog: pytest.LogCaptureFixture
) -> None:
    sampler = e2e_service.create_sampling_client(base_model=MICRO).result(timeout=60)
    with caplog.at_level(logging.WARNING, logger="tinkjax.client"):
        sampler.on_queue_state_change("active", None)
        sampler.on_queue_state_change("paused_capacity", None)
        sampler.on_queue_state_change("paused_rate_limit", "busy")
    paused = [r.getMessage() for r in caplog.records if "Sampling is paused" in r.getMessage()]
    assert len(paused) == 1
    assert "capacity" in paused[0]


def test_load_state_takes_a_weights_access_token(e2e_service: ServiceClient) -> None:
    tc = e2e_service.create_lora_training_client(MICRO, rank=2).result(timeout=60)
    path = tc.save_state("tok").result(timeout=60).path
    assert tc.load_state(path, weights_access_token="token").result(timeout=60).path == path
    out = tc.load_state_with_optimizer(path, weights_access_token=None).result(timeout=60)
    assert out.path == path


def test_rest_getters_take_access_scope(e2e_service: ServiceClient) -> None:
    tc = e2e_service.create_lora_training_client(MICRO, rank=2).result(timeout=60)
    path = tc.save_state("scope").result(timeout=60).path
    rest = e2e_service.create_rest_client()
    run = rest.get_training_run_by_tinker_path(path, access_scope="accessible").result(60)
    assert run.training_run_id == tc.model_id
    session = rest.get_session(e2e_service.session_id, access_scope="accessible").result(60)
    assert tc.model_id in session.training_run_ids


def test_parsed_path_from_tinker_path_and_span_offsets() -> None:
    parsed = ParsedCheckpointTinkerPath.from_tinker_path("tinker://run-1/sampler_weights/s")
    assert parsed == parse_tinker_path("tinker://run-1/sampler_weights/s")
    assert (parsed.checkpoint_type, parsed.checkpoint_id) == ("sampler", "sampler_weights/s")
    with pytest.raises(ValueError, match="tinker://"):  # a WireFormatError is a ValueError
        ParsedCheckpointTinkerPath.from_tinker_path("http://run-1/weights/x")
    assert issubclass(WireFormatError, ValueError)
    assert PromptProvenanceSpan(sequence_id="s", length=3).offset == 0
    assert SampledProvenanceSpan(sequence_id="s", length=3, offset=2).offset == 2
