"""RestClient listings, pagination and deletes against the canned service."""

from __future__ import annotations

import asyncio

import pytest

from tinkjax.client import RestClient, ServiceClient
from tinkjax.errors import WireFormatError

from .fake import FakeTinker

RUN = "sess-1:train:0"


@pytest.fixture
def rest(service: ServiceClient) -> RestClient:
    return service.create_rest_client()


def test_listings_and_pagination(rest: RestClient, fake: FakeTinker) -> None:
    page = rest.list_training_runs(limit=3, offset=2).result(timeout=30)
    assert [r.training_run_id for r in page.training_runs] == [
        f"sess-1:train:{i}" for i in (2, 3, 4)
    ]
    assert page.cursor.total_count == 7
    assert [r.training_run_id[-1] for r in rest.iter_training_runs(page_size=3)] == list("0123456")
    assert len([r for r in fake.requests if r.url.path == "/api/v1/training_runs"]) == 4
    assert list(rest.iter_sessions(page_size=2)) == [f"s{i}" for i in range(5)]
    run = rest.get_training_run_by_tinker_path(f"tinker://{RUN}/weights/a").result(timeout=30)
    assert run.training_run_id == RUN
    assert run.lora_rank == 8
    with pytest.raises(WireFormatError, match="tinker://"):
        rest.get_training_run_by_tinker_path("s3://nope")
    caps = rest.get_server_capabilities().result(timeout=30)
    assert caps.supported_models[0].model_name == "tinkjax/bytelm-micro"
    info = rest.get_weights_info_by_tinker_path(f"tinker://{RUN}/weights/a").result(timeout=30)
    assert info.is_lora
    assert rest.get_sampler("sess-1:sample:0").result(timeout=30).base_model


def test_checkpoints_list_and_delete(
    service: ServiceClient, rest: RestClient, fake: FakeTinker
) -> None:
    tc = service.create_lora_training_client("tinkjax/bytelm-micro").result(timeout=30)
    paths = [tc.save_state(f"c{i}").result(timeout=30).path for i in range(3)]
    listed = rest.list_checkpoints(RUN).result(timeout=30)
    assert [c.tinker_path for c in listed.checkpoints] == paths
    assert [c.checkpoint_id for c in rest.iter_user_checkpoints(page_size=2)] == [
        "weights/c0",
        "weights/c1",
        "weights/c2",
    ]
    rest.delete_checkpoint_from_tinker_path(paths[1]).result(timeout=30)
    left = asyncio.run(_alist(rest))
    assert left == [paths[0], paths[2]]
    deletes = [r for r in fake.requests if r.method == "DELETE"]
    assert deletes[0].url.path == f"/api/v1/training_runs/{RUN}/checkpoints/weights/c1"


async def _alist(rest: RestClient) -> list[str]:
    return [c.tinker_path for c in (await rest.list_checkpoints_async(RUN)).checkpoints]
