"""RestClient listings, pagination and deletes against the canned service."""

from __future__ import annotations

import asyncio
from typing import Any

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


def _rest_requests(fake: FakeTinker) -> list[str]:
    """The requests sent but those of the session's start (which run in the background)."""
    start = ("/api/v1/client/config", "/api/v1/create_session")
    return [r.url.path for r in fake.requests if r.url.path not in start]


@pytest.mark.parametrize(
    "path",
    [
        "tinker://../weights/y",  # would DELETE /api/v1/training_runs/weights/y
        "tinker://./weights/y",
        "tinker://r/weights/..",
        "tinker://r/weights/y?x=1",
        "tinker://r/weights/y#frag",
        "tinker://r%2F..%2F/weights/y",
        "tinker://r r/weights/y",
    ],
)
def test_a_tinker_path_with_an_invalid_part_is_refused_before_any_request(
    rest: RestClient, fake: FakeTinker, path: str
) -> None:
    sent = len(_rest_requests(fake))
    for call in (
        rest.delete_checkpoint_from_tinker_path,
        rest.get_checkpoint_archive_url_from_tinker_path,
        rest.get_training_run_by_tinker_path,
    ):
        with pytest.raises(WireFormatError, match="is not a valid id") as info:
            call(path).result(timeout=30)
        assert repr(path) in str(info.value)
        assert info.value.field == "tinker_path"
    assert len(_rest_requests(fake)) == sent


@pytest.mark.parametrize(
    ("call", "field", "value"),
    [
        (lambda r: r.delete_checkpoint("..", "weights/y"), "training_run_id", ".."),
        (lambda r: r.delete_checkpoint(RUN, "weights/../../x"), "checkpoint_id", "weights/../../x"),
        (lambda r: r.delete_checkpoint(RUN, "weights/x?y"), "checkpoint_id", "weights/x?y"),
        (lambda r: r.delete_checkpoint(RUN, "bogus/x"), "checkpoint_id", "bogus/x"),
        (lambda r: r.get_checkpoint_archive_url(RUN, "weights/#x"), "checkpoint_id", "weights/#x"),
        (lambda r: r.get_training_run("a?b"), "training_run_id", "a?b"),
        (lambda r: r.list_checkpoints(".."), "training_run_id", ".."),
        (lambda r: r.get_session("../x"), "session_id", "../x"),
        (lambda r: r.get_sampler("s#1"), "sampler_id", "s#1"),
    ],
)
def test_an_invalid_id_is_refused_naming_it(
    rest: RestClient, fake: FakeTinker, call: Any, field: str, value: str
) -> None:
    sent = len(_rest_requests(fake))
    with pytest.raises(WireFormatError, match=r"is not a valid id|must look like|has kind") as info:
        call(rest).result(timeout=30)
    assert info.value.field == field
    assert repr(value) in str(info.value)
    assert len(_rest_requests(fake)) == sent


def test_valid_ids_make_exactly_the_expected_urls(rest: RestClient, fake: FakeTinker) -> None:
    rest.get_training_run(RUN).result(timeout=30)
    rest.get_sampler("sess-1:sample:0").result(timeout=30)
    rest.delete_checkpoint_from_tinker_path(f"tinker://{RUN}/sampler_weights/v1.2_x-y~z").result(
        timeout=30
    )
    rest.list_checkpoints(RUN).result(timeout=30)
    paths = [r.url.raw_path.decode() for r in fake.requests[-4:]]
    assert paths[0] == f"/api/v1/training_runs/{RUN}?access_scope=owned"
    assert paths[1] == "/api/v1/samplers/sess-1:sample:0"
    assert paths[2] == f"/api/v1/training_runs/{RUN}/checkpoints/sampler_weights/v1.2_x-y~z"
    assert paths[3] == f"/api/v1/training_runs/{RUN}/checkpoints"
