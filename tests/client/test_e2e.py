"""End to end over real loopback against the local backend (micro model): train → save →
sample → resume → list → download, sync and async, and the backend's fault injection."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tinkjax import events
from tinkjax.client import RestClient, ServiceClient
from tinkjax.errors import BadRequestError, FutureExpiredError, NotFoundError
from tinkjax.server import FaultRule
from tinkjax.types import AdamParams, Datum, ModelInput, SamplingParams

from .conftest import API_KEY

pytestmark = pytest.mark.timeout(120)

MODEL = "tinkjax/bytelm-micro"
TEXT = b"the quick brown fox jumps over the lazy dog"


def sft_datum(text: bytes = TEXT) -> Datum:
    toks = list(text)
    return Datum(
        model_input=ModelInput.from_ints(toks[:-1]),
        loss_fn_inputs={"target_tokens": toks[1:], "weights": [1.0] * (len(toks) - 1)},
    )


def test_sync_train_save_sample_resume_list_download(
    e2e_service: ServiceClient, local_server: Any, tmp_path: Path
) -> None:
    sc = e2e_service
    tc = sc.create_lora_training_client(MODEL, rank=4, seed=0).result(timeout=60)
    assert tc.get_tokenizer().decode(list(b"abc")) == "abc"
    batch = [sft_datum(), sft_datum(b"hello world, hello tinkjax")]
    losses = []
    for _ in range(4):  # pipelined: submit both before waiting
        f = tc.forward_backward(batch, "cross_entropy")
        o = tc.optim_step(AdamParams(learning_rate=2e-2))
        out = f.result(timeout=60)
        o.result(timeout=60)
        losses.append(out.metrics["loss:sum"])
        assert [x["logprobs"].to_numpy().shape for x in out.loss_fn_outputs] == [
            (len(TEXT) - 1,),
            (25,),
        ]
    assert losses[-1] < losses[0]
    state = tc.save_state("step4").result(timeout=60)
    assert state.path == f"tinker://{tc.model_id}/weights/step4"
    sampler = tc.save_weights_and_get_sampling_client("step4s").result(timeout=60)
    prompt = ModelInput.from_ints(list(b"the quick"))
    res = sampler.sample(prompt, 3, SamplingParams(max_tokens=6, seed=1)).result(timeout=60)
    assert len(res.sequences) == 3
    assert all(len(s.tokens) <= 6 and s.logprobs is not None for s in res.sequences)
    lps = sampler.compute_logprobs(prompt).result(timeout=60)
    assert lps[0] is None
    assert all(v is not None and v < 0 for v in lps[1:])
    # Resume with the optimizer state: the forward loss matches the trained model's.
    resumed = sc.create_training_client_from_state_with_optimizer(state.path).result(timeout=60)
    here = tc.forward(batch, "cross_entropy").result(timeout=60).metrics["loss:sum"]
    there = resumed.forward(batch, "cross_entropy").result(timeout=60).metrics["loss:sum"]
    assert there == pytest.approx(here, rel=1e-4)
    # Every request of the model was applied exactly once.
    assert all(local_server.applied_count(tc.model_id, s) == 1 for s in range(1, 12))
    rest = sc.create_rest_client()
    listed = rest.list_checkpoints(tc.model_id).result(timeout=60).checkpoints
    assert {c.checkpoint_id for c in listed} == {"weights/step4", "sampler_weights/step4s"}
    assert state.path in {c.tinker_path for c in rest.iter_user_checkpoints(page_size=1)}
    run = rest.get_training_run_by_tinker_path(state.path).result(timeout=60)
    assert run.base_model == MODEL
    seen: list[int] = []
    out_dir = rest.download_checkpoint(
        state.path, tmp_path / "dl", progress_bar=False, progress=lambda d, t: seen.append(d)
    ).result(timeout=60)
    assert any(p.stat().st_size > 0 for p in out_dir.rglob("*") if p.is_file())
    assert seen
    rest.delete_checkpoint_from_tinker_path(state.path).result(timeout=60)
    with pytest.raises(NotFoundError):
        rest.download_checkpoint(state.path, tmp_path / "dl2").result(timeout=60)


def test_async_loop(local_server: Any, tmp_path: Path) -> None:
    async def main() -> None:
        async with ServiceClient(base_url=local_server.base_url, api_key=API_KEY) as sc:
            tcs = await asyncio.gather(
                *(sc.create_lora_training_client_async(MODEL, rank=2) for _ in range(2))
            )
            assert len({t.model_id for t in tcs}) == 2
            tc = tcs[0]
            fwd = await tc.forward_backward_async([sft_datum()], "cross_entropy")
            opt = await tc.optim_step_async(AdamParams(learning_rate=1e-2))
            assert (await fwd).metrics["loss:sum"] > 0
            await opt
            sampler = await tc.save_weights_and_get_sampling_client_async()
            outs = await asyncio.gather(
                *(
                    sampler.sample_async(
                        ModelInput.from_ints(list(b"fox")), 1, SamplingParams(max_tokens=3)
                    )
                    for _ in range(8)
                )
            )
            assert all(len(o.sequences) == 1 for o in outs)
            saved = await (await tc.save_state_async("a1"))
            resumed = await sc.create_training_client_from_state_async(saved.path)
            assert (await (await resumed.forward_async([sft_datum()], "cross_entropy"))).metrics
            rest = sc.create_rest_client()
            ckpts = await rest.list_checkpoints_async(tc.model_id)
            assert [c.tinker_path for c in ckpts.checkpoints] == [saved.path]
            dl = await rest.download_checkpoint(saved.path, tmp_path / "a")
            assert dl.is_dir()

    asyncio.run(main())


def test_backend_faults_nothing_hangs_nothing_applied_twice(
    e2e_service: ServiceClient, local_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    statuses: list[int] = []
    events.attach(
        "e2e-status", "tinkjax.request.stop", lambda n, m, md: statuses.append(md["status"])
    )
    try:
        tc = e2e_service.create_lora_training_client(MODEL, rank=2).result(timeout=60)
        sampler = tc.save_weights_and_get_sampling_client().result(timeout=60)
        rules = [
            FaultRule(r"/api/v1/forward_backward$", status=503, times=2),
            FaultRule(r"/api/v1/optim_step$", drop=True, times=1),
            FaultRule(r"/api/v1/retrieve_future$", status=408, times=2),
            FaultRule(r"/api/v1/retrieve_future$", status=502, times=2),
            FaultRule(r"/api/v1/retrieve_future$", delay_s=0.3, times=3),
            FaultRule(r"/api/v1/asample$", status=429, retry_after=0.05, times=15),
            FaultRule(r"/api/v1/save_weights$", status=429, retry_after=0.05, times=2),
        ]
        local_server.faults.rules.extend(rules)
        futs = []
        for _ in range(3):
            futs.append(tc.forward_backward([sft_datum()], "cross_entropy"))
            futs.append(tc.optim_step(AdamParams(learning_rate=1e-3)))
        futs.append(tc.save_state("faulty"))
        samples = [
            sampler.sample(ModelInput.from_ints([1, 2, 3]), 1, SamplingParams(max_tokens=2))
            for _ in range(50)
        ]
        for f in futs:
            f.result(timeout=90)
        assert all(len(s.result(timeout=90).sequences) == 1 for s in samples)
        assert all(r.fired == r.times for r in rules)
        for seq in range(1, 9):
            assert local_server.applied_count(tc.model_id, seq) == 1, seq
        assert {429, 503, 408, 502} <= set(statuses)
        # An expired training future is a documented error; a sample is resubmitted.
        local_server.faults.rules.append(
            FaultRule(r"/api/v1/retrieve_future$", status=410, times=1)
        )
        with pytest.raises(FutureExpiredError):
            tc.forward([sft_datum()], "cross_entropy").result(timeout=60)
        local_server.faults.rules.append(
            FaultRule(r"/api/v1/retrieve_future$", status=410, times=1)
        )
        assert (
            sampler.sample(ModelInput.from_ints([4]), 1, SamplingParams(max_tokens=1))
            .result(timeout=60)
            .sequences
        )
    finally:
        events.detach("e2e-status")
    assert API_KEY not in caplog.text


def test_rejected_request_does_not_stall_the_model(e2e_service: ServiceClient) -> None:
    tc = e2e_service.create_lora_training_client(MODEL, rank=2).result(timeout=60)
    bad = tc.forward_backward([sft_datum()], "no_such_loss")
    good = tc.forward([sft_datum()], "cross_entropy")
    with pytest.raises(BadRequestError, match="loss_fn"):
        bad.result(timeout=60)
    assert good.result(timeout=30).metrics["loss:sum"] > 0  # not stuck behind the gap


def test_custom_loss_contract_against_backend(e2e_service: ServiceClient) -> None:
    tc = e2e_service.create_lora_training_client(MODEL, rank=2).result(timeout=60)
    batch = [sft_datum(), sft_datum(b"hello again")]
    ref = tc.forward(batch, "cross_entropy").result(timeout=60).metrics["loss:sum"]
    custom = tc.forward_backward_custom(batch, "cross_entropy")
    after = tc.optim_step(AdamParams(learning_rate=1e-3))
    out = custom.result(timeout=60)
    after.result(timeout=60)
    assert out.metrics["loss:sum"] == pytest.approx(ref, rel=1e-4)


def test_json_era_wire_mode(local_server: Any) -> None:
    with ServiceClient(base_url=local_server.base_url, api_key=API_KEY, wire_mode="json") as sc:
        tc = sc.create_lora_training_client(MODEL, rank=2).result(timeout=60)
        out = tc.forward_backward([sft_datum()], "cross_entropy").result(timeout=60)
        fwd = tc.forward([sft_datum()], "cross_entropy").result(timeout=60)
        assert out.metrics["loss:sum"] == pytest.approx(fwd.metrics["loss:sum"], rel=1e-5)
        lp = np.asarray(out.loss_fn_outputs[0]["logprobs"].to_numpy())
        assert lp.shape == (len(TEXT) - 1,)
        samp = tc.save_weights_and_get_sampling_client().result(timeout=60)
        assert (
            samp.sample(ModelInput.from_ints([1]), 2, SamplingParams(max_tokens=2))
            .result(timeout=60)
            .sequences[1]
            .sequence_id
        )


def test_embedded_default_starts_local_backend(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    for var in ("TINKER_API_KEY", "TINKER_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    from tinkjax.client import _embedded

    _embedded._stop()  # observe a fresh start even if another test started it
    caplog.set_level(logging.INFO, logger="tinkjax.client")
    with ServiceClient() as sc:
        assert sc.config.embedded
        caps = sc.get_server_capabilities()
        assert any(m.model_name == MODEL for m in caps.supported_models)
        again = RestClient(base_url="local")
        assert again.transport.config.base_url == sc.config.base_url  # one server per process
    lines = [r for r in caplog.records if "embedded local backend" in r.getMessage()]
    assert len(lines) == 1


def test_the_embedded_backend_takes_only_the_key_it_shares_with_the_client(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No configuration: the client sends the key the in-process server generated; another
    process on the machine reaching the loopback port with any other key gets 401."""
    import httpx

    from tinkjax.client._config import LOCAL_API_KEY

    for var in ("TINKER_API_KEY", "TINKER_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    with ServiceClient() as sc:
        key = sc.config.api_key
        assert key is not None
        assert key.startswith("tml-embedded-")
        assert key != LOCAL_API_KEY
        assert sc.get_server_capabilities().supported_models
        assert RestClient().transport.config.api_key == key
        url = f"{sc.config.base_url}/api/v1/get_server_capabilities"
        for other in (LOCAL_API_KEY, "tml-local", API_KEY):
            assert httpx.get(url, headers={"X-API-Key": other}).status_code == 401
        assert httpx.get(url, headers={"X-API-Key": key}).status_code == 200
        assert key not in repr(sc.config)
