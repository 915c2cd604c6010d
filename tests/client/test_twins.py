"""Sync/async twins derived from one definition keep names, signatures, docs and behaviour."""

from __future__ import annotations

import asyncio
import inspect
import pydoc

import pytest

from tinkjax.client._futures import APIFuture
from tinkjax.client._twins import awaiting, blocking, submitting


class Thing:
    def get(self, x: int, *, suffix: str = "!") -> APIFuture[str]:
        """Fetch ``x`` as text.

        Raises:
            ValueError: ``x`` is negative.
        """
        if x < 0:
            raise ValueError(f"x must be >= 0, got {x}")
        return APIFuture.completed(f"{x}{suffix}")

    get_async = awaiting(get)

    def submit(self, x: int) -> APIFuture[int]:
        """Submit ``x``."""
        self.submitted = x
        return APIFuture.completed(x * 2)

    submit_async = submitting(submit)

    async def info_async(self, k: int, scale: float = 1.0) -> float:
        """The info."""
        await asyncio.sleep(0)
        return k * scale

    info = blocking(info_async)


def test_async_twin_has_the_written_methods_parameters_and_its_own_name() -> None:
    sig = inspect.signature(Thing.get_async)
    assert list(sig.parameters) == ["self", "x", "suffix"]
    assert sig.parameters["suffix"].default == "!"
    assert sig.parameters["suffix"].kind is inspect.Parameter.KEYWORD_ONLY
    assert sig.return_annotation == "str"  # the future's result, not the future
    assert Thing.get_async.__name__ == "get_async"
    assert Thing.get_async.__qualname__ == "Thing.get_async"
    assert inspect.iscoroutinefunction(Thing.get_async)


def test_twin_docstring_names_its_source_and_keeps_its_text() -> None:
    doc = Thing.get_async.__doc__ or ""
    assert doc.startswith("Async twin of :meth:`get`.")
    assert "ValueError: ``x`` is negative." in doc
    assert (Thing.info.__doc__ or "").startswith("Blocking twin of :meth:`info_async`.")
    rendered = pydoc.render_doc(Thing.get_async, renderer=pydoc.plaintext)
    # Annotations are strings under `from __future__ import annotations`, as for any method.
    assert "get_async(self, x: 'int', *, suffix: 'str' = '!') -> 'str'" in rendered


def test_awaiting_twin_returns_the_result_and_raises_the_same_errors() -> None:
    thing = Thing()
    assert asyncio.run(thing.get_async(3, suffix="?")) == "3?"
    with pytest.raises(ValueError, match="got -1"):
        asyncio.run(thing.get_async(-1))


def test_submitting_twin_returns_the_future_without_awaiting_it() -> None:
    thing = Thing()
    future = asyncio.run(thing.submit_async(4))
    assert isinstance(future, APIFuture)
    assert thing.submitted == 4
    assert future.result() == 8
    assert inspect.signature(Thing.submit_async).return_annotation == "APIFuture[int]"


def test_blocking_twin_runs_the_coroutine_on_the_client_loop() -> None:
    assert Thing().info(3, scale=0.5) == 1.5
    assert Thing.info.__name__ == "info"
    assert list(inspect.signature(Thing.info).parameters) == ["self", "k", "scale"]


def test_blocking_twin_inside_a_running_loop_warns_and_names_the_async_call() -> None:
    async def inside() -> float:
        return Thing().info(2)

    with pytest.warns(RuntimeWarning, match=r"info_async"):
        assert asyncio.run(inside()) == 2.0


def test_blocking_needs_an_async_name() -> None:
    async def fetch(self: object) -> int:
        return 1

    with pytest.raises(ValueError, match="'fetch'"):
        blocking(fetch)


@pytest.mark.parametrize(
    "cls_name", ["ServiceClient", "TrainingClient", "SamplingClient", "RestClient"]
)
def test_every_public_call_of_the_clients_has_a_twin_with_its_parameters(cls_name: str) -> None:
    import tinkjax.client as client

    cls = getattr(client, cls_name)
    pairs = [
        name
        for name in dir(cls)
        if not name.startswith("_") and name.endswith("_async") and callable(getattr(cls, name))
    ]
    assert pairs, f"{cls_name} has no async calls"
    for async_name in pairs:
        sync = getattr(cls, async_name.removesuffix("_async"))
        twin = getattr(cls, async_name)
        assert inspect.iscoroutinefunction(twin), async_name
        sync_params = list(inspect.signature(sync).parameters.values())
        twin_params = list(inspect.signature(twin).parameters.values())
        # close/close_async and get_info keep hand-written pairs; their parameters still match.
        assert [(p.name, p.kind, p.default) for p in sync_params] == [
            (p.name, p.kind, p.default) for p in twin_params
        ], async_name
