"""TrainingClient against the canned service: seq ids, chunking, ordering, futures."""

from __future__ import annotations

import asyncio
import concurrent.futures

import numpy as np
import pytest

from tinkjax.client import APIFuture, ServiceClient
from tinkjax.types import AdamParams, Datum, ModelInput

from .conftest import API_KEY
from .fake import FakeTinker


def datum(n: int) -> Datum:
    return Datum(
        model_input=ModelInput.from_ints(list(range(n))),
        loss_fn_inputs={"target_tokens": list(range(1, n + 1)), "weights": [1.0] * n},
    )


def test_train_loop_seq_ids_and_results(service: ServiceClient, fake: FakeTinker) -> None:
    tc = service.create_lora_training_client("tinkjax/bytelm-micro", rank=8).result(timeout=30)
    assert tc.model_id == "sess-1:train:0"
    assert tc.base_model == "tinkjax/bytelm-micro"
    f1 = tc.forward_backward([datum(3), datum(4)], "cross_entropy")
    o1 = tc.optim_step(AdamParams(learning_rate=1e-3))
    f2 = tc.forward([datum(2)], "cross_entropy")
    s1 = tc.save_state("ckpt")
    assert isinstance(f1, APIFuture)
    out = f1.result(timeout=30)
    assert [o["logprobs"].to_numpy().shape for o in out.loss_fn_outputs] == [(3,), (4,)]
    assert out.metrics["loss:sum"] == 7.0
    assert o1.result(timeout=30).metrics == {"lr": pytest.approx(1e-3)}
    assert f2.result(timeout=30).metrics["loss:sum"] == 2.0
    assert s1.result(timeout=30).path == "tinker://sess-1:train:0/weights/ckpt"
    # Seq ids are reserved in call order starting at 1, each applied once.
    assert sorted(fake.applied) == [("sess-1:train:0", s) for s in (1, 2, 3, 4)]
    assert set(fake.applied.values()) == {1}


def test_chunks_are_split_sent_with_consecutive_ids_and_combined(fake: FakeTinker) -> None:
    fake.config = {"fwdbwd_max_chunk_len": 2}
    sc = ServiceClient(
        base_url="http://fake.test",
        api_key=API_KEY,
        http_transport=fake.transport(),
        heartbeat_interval=0,
    )
    try:
        tc = sc.create_lora_training_client("tinkjax/bytelm-micro").result(timeout=30)
        data = [datum(n) for n in (1, 2, 3, 4, 5)]
        assert [len(c) for c in tc._queue.chunk(data)] == [2, 2, 1]
        out = tc.forward_backward(data, "cross_entropy").result(timeout=30)
        after = tc.optim_step(AdamParams()).result(timeout=30)
        assert after.metrics is not None
    finally:
        sc.close()
    assert sorted(fake.fwdbwd_seq) == [1, 2, 3]
    assert [o["logprobs"].to_numpy().size for o in out.loss_fn_outputs] == [1, 2, 3, 4, 5]
    assert out.metrics["loss:sum"] == 15.0  # summed over chunks
    assert out.metrics["seq:max"] == 3.0  # max over chunks
    # mean weighted by datums per chunk: chunks hold 2, 2, 1 datums with n:mean = 2, 2, 1
    assert out.metrics["n:mean"] == pytest.approx((2 * 2 + 2 * 2 + 1 * 1) / 5)
    assert ("sess-1:train:0", 4) in fake.applied  # optim_step after all chunks


def test_async_twins(service: ServiceClient) -> None:
    async def main() -> float:
        tc = await service.create_lora_training_client_async("tinkjax/bytelm-micro")
        fut = await tc.forward_backward_async([datum(3)], "cross_entropy")
        out = await fut
        await (await tc.optim_step_async(AdamParams()))
        info = await tc.get_info_async()
        assert info.lora_rank == 8
        return out.metrics["loss:sum"]

    assert asyncio.run(main()) == 3.0


def test_sync_result_inside_running_loop_warns(service: ServiceClient) -> None:
    fut = service.create_lora_training_client("tinkjax/bytelm-micro")
    never: APIFuture[int] = APIFuture(concurrent.futures.Future())

    async def main() -> None:
        with pytest.warns(RuntimeWarning, match="await"), pytest.raises(TimeoutError):
            never.result(timeout=0.01)
        tc = await fut
        with pytest.warns(RuntimeWarning, match="get_info_async"):
            tc.get_info()

    asyncio.run(main())


def test_empty_batch_and_bad_optim_args(service: ServiceClient) -> None:
    tc = service.create_lora_training_client("tinkjax/bytelm-micro").result(timeout=30)
    out = tc.forward_backward([], "cross_entropy").result(timeout=30)
    assert out.loss_fn_outputs == []
    with pytest.raises(ValueError, match="exactly one"):
        tc.optim_step()
    assert np.isfinite(1.0)
