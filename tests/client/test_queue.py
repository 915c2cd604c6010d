"""``ModelQueue`` against the canned service: reserved ids order later calls, chunks go out
through the session's wire, outputs come back in chunk order."""

from __future__ import annotations

import pytest

from tinkjax.client import APIFuture, ServiceClient, combine_outputs
from tinkjax.client._loop import submit
from tinkjax.types import AdamParams

from .fake import FakeTinker
from .test_training import datum


def test_reserved_ids_order_later_calls_across_two_passes(
    service: ServiceClient, fake: FakeTinker
) -> None:
    """What the custom-loss path relies on: ids reserved now are served before a call made
    later, whatever the passes' loss configs."""
    tc = service.create_lora_training_client("tinkjax/bytelm-micro").result(timeout=30)
    queue = tc._queue
    ids = queue.reserve(4)
    assert ids == [1, 2, 3, 4]
    assert queue.next_seq_id == 5
    later = tc.optim_step(AdamParams())  # id 5: must wait behind 1..4

    async def two_passes() -> int:
        chunks = [[datum(2)], [datum(3)]]
        fwd = await queue.send_fwdbwd(
            chunks, ids[:2], loss_fn="cross_entropy", loss_fn_config=None, forward_only=True
        )
        assert not later.done()  # ordered after the reserved ids
        bwd = await queue.send_fwdbwd(
            chunks, ids[2:], loss_fn="cross_entropy", loss_fn_config={"k": 1.0}, forward_only=False
        )
        assert [len(o.loss_fn_outputs) for o in fwd + bwd] == [1, 1, 1, 1]
        return len(combine_outputs(fwd + bwd).loss_fn_outputs)

    assert APIFuture(submit(two_passes())).result(timeout=30) == 4
    later.result(timeout=30)
    assert sorted(s for _, s in fake.applied) == [1, 2, 3, 4, 5]


def test_released_ids_are_consumed_by_forward_only_no_ops(
    service: ServiceClient, fake: FakeTinker
) -> None:
    tc = service.create_lora_training_client("tinkjax/bytelm-micro").result(timeout=30)
    ids = tc._queue.reserve(2)
    later = tc.optim_step(AdamParams())
    submit(tc._queue.release(ids)).result(timeout=30)
    later.result(timeout=30)
    assert sorted(s for _, s in fake.applied) == [1, 2, 3]
    assert sorted(fake.fwdbwd_seq) == [1, 2]


def test_reserve_rejects_a_negative_count(service: ServiceClient) -> None:
    tc = service.create_lora_training_client("tinkjax/bytelm-micro").result(timeout=30)
    with pytest.raises(ValueError, match="n must be >= 0"):
        tc._queue.reserve(-1)
