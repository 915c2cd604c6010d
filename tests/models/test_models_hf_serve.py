"""A Hugging Face checkpoint served from a local folder (``start(models={NAME: PATH})``,
``tinkjax serve --model NAME=PATH``), driven by the official SDK unchanged."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tinkjax.cli._serve import _served
from tinkjax.client._tokenizer import load_tokenizer
from tinkjax.models import HFTokenizer
from tinkjax.server import ServerHandle, start

from .hf_checkpoints import CORPUS, write_checkpoint

tinker = pytest.importorskip("tinker")
types = tinker.types
NAME = "tiny/qwen3"


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("hf") / "qwen3", "qwen3", seed=5)


@pytest.fixture(scope="module")
def hf_server(folder: Path) -> Iterator[ServerHandle]:
    handle = start(models={NAME: folder, "tinkjax/bytelm-micro": None}, long_poll_s=2.0)
    old = {k: os.environ.get(k) for k in ("TINKER_BASE_URL", "TINKER_API_KEY", "HF_HUB_OFFLINE")}
    os.environ.update(TINKER_BASE_URL=handle.base_url, TINKER_API_KEY="tml-hf", HF_HUB_OFFLINE="1")
    try:
        yield handle
    finally:
        handle.stop()
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def test_bad_model_folders_are_refused_at_start(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"models: x=.*config\.json: not found"):
        start(models={"x": tmp_path})
    with pytest.raises(ValueError, match="expected NAME=PATH"):
        _served(["no-path"])


def test_official_sdk_trains_and_samples_a_hf_model(hf_server: ServerHandle, folder: Path) -> None:
    with tinker.ServiceClient() as service:
        caps = tinker.RestClient(base_url=hf_server.base_url, api_key="tml-hf")
        caps = caps.get_server_capabilities().result()
        names = {m.model_name for m in caps.supported_models}
        assert {NAME, "tinkjax/bytelm-micro"} <= names
        tc = service.create_lora_training_client(base_model=NAME, rank=8, seed=1).result()
        info = tc.get_info()
        assert (info.model_data.arch, info.model_data.model_name) == ("qwen3", NAME)
        assert info.model_data.tokenizer_id == str(folder.resolve())
        # The official SDK's own tokenizer loader reads the served folder (hub offline).
        tok = tc.get_tokenizer()
        ref = HFTokenizer(folder)
        text = CORPUS[:70]
        assert list(tok.encode(text, add_special_tokens=False)) == ref.encode(text)
        # tinkjax's loader reads it without transformers.
        assert isinstance(load_tokenizer(NAME, info.model_data.tokenizer_id), HFTokenizer)
        ids = ref.encode(text)
        datum = types.Datum(
            model_input=types.ModelInput.from_ints(ids[:-1]),
            loss_fn_inputs={"target_tokens": ids[1:], "weights": [1.0] * (len(ids) - 1)},
        )
        losses = []
        for _ in range(4):
            fb = tc.forward_backward([datum], "cross_entropy").result()
            losses.append(fb.metrics["loss:sum"])
            tc.optim_step(types.AdamParams(learning_rate=2e-2)).result()
        assert losses[-1] < 0.8 * losses[0], losses
        sampler = tc.save_weights_and_get_sampling_client().result()
        prompt = types.ModelInput.from_ints(ids[:6])
        params = types.SamplingParams(max_tokens=8, temperature=0.0)
        out = sampler.sample(prompt, num_samples=1, sampling_params=params).result()
        seq = out.sequences[0]
        assert 1 <= len(seq.tokens) <= 8
        assert np.all(np.asarray(seq.logprobs) <= 0)
        # A stop string is encoded with the model's tokenizer: stop at the first token's text.
        first = ref.decode(seq.tokens[:1])
        if first.strip():
            stop = types.SamplingParams(max_tokens=8, temperature=0.0, stop=[first])
            cut = sampler.sample(prompt, num_samples=1, sampling_params=stop).result()
            assert cut.sequences[0].stop_reason == "stop"
