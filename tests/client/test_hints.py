"""Every hint in an error names a parameter that exists (issue 14, point 5)."""

from __future__ import annotations

import inspect

import pytest

from tinkjax.client import ServiceClient, TrainingClient
from tinkjax.errors import ConfigurationError, TinkerError


def test_a_second_named_save_says_how_to_replace_it(e2e_service: ServiceClient) -> None:
    tc = e2e_service.create_lora_training_client("tinkjax/bytelm-micro", rank=4).result(timeout=60)
    path = tc.save_weights_for_sampler("hint").result(timeout=60).path
    with pytest.raises(TinkerError, match="already exists") as sampler_error:
        tc.save_weights_for_sampler("hint").result(timeout=60)
    message = str(sampler_error.value)
    assert "overwrite=" not in message  # save_weights_for_sampler has no such parameter
    assert "overwrite" not in inspect.signature(TrainingClient.save_weights_for_sampler).parameters
    assert f"delete_checkpoint_from_tinker_path({path!r})" in message

    tc.save_state("hint").result(timeout=60)
    with pytest.raises(TinkerError, match=r"save_state\(name, overwrite=True\)"):
        tc.save_state("hint").result(timeout=60)
    assert "overwrite" in inspect.signature(TrainingClient.save_state).parameters
    tc.save_state("hint", overwrite=True).result(timeout=60)  # the hint works


def test_training_create_sampling_client_hint_names_what_it_takes(
    e2e_service: ServiceClient,
) -> None:
    tc = e2e_service.create_lora_training_client("tinkjax/bytelm-micro", rank=4).result(timeout=60)
    assert "base_model" not in inspect.signature(TrainingClient.create_sampling_client).parameters
    with pytest.raises(ConfigurationError, match="needs model_path") as error:
        tc.create_sampling_client(None)  # type: ignore[arg-type]
    message = str(error.value)
    assert "save_weights_and_get_sampling_client()" in message
    assert "ServiceClient.create_sampling_client(base_model=" in message
