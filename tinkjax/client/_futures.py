"""``APIFuture``: the result of every client call, usable from sync and async code."""

from __future__ import annotations

import asyncio
import concurrent.futures
import warnings
from collections.abc import Callable, Generator
from typing import Any, Generic, TypeVar

from tinkjax.errors import FutureTimeoutError

from ._loop import CallFuture, warn_if_in_loop

__all__ = ["APIFuture", "ClientFuture"]

T = TypeVar("T")


class APIFuture(Generic[T]):
    """A result that will arrive: ``future.result(timeout)`` in sync code, ``await future``
    in async code.

    The work runs on the client's background loop; the future only observes it, so waiting
    with a timeout (or abandoning the future) does not cancel the request.
    """

    __slots__ = ("_future",)

    def __init__(self, future: concurrent.futures.Future[T]) -> None:
        self._future = future

    @classmethod
    def completed(cls, value: T) -> APIFuture[T]:
        """A future that already holds ``value``."""
        f: concurrent.futures.Future[T] = concurrent.futures.Future()
        f.set_result(value)
        return cls(f)

    def result(self, timeout: float | None = None) -> T:
        """Block until the result arrives.

        Args:
            timeout: seconds to wait; ``None`` waits as long as it takes.

        Raises:
            FutureTimeoutError: (a ``TimeoutError``) no result within ``timeout``, naming the
                request waited on; the request keeps running.
            Exception: whatever the call raised (see :mod:`tinkjax.errors`).
        """
        if not self._future.done():
            warn_if_in_loop("APIFuture.result()", "`await future` (or result_async())")
        try:
            return self._future.result(timeout)
        except TimeoutError:
            if self._future.done():  # the call itself raised a TimeoutError
                raise
            raise self._timed_out(timeout) from None

    async def result_async(self, timeout: float | None = None) -> T:
        """Await the result; ``timeout`` as in :meth:`result`."""
        wrapped = asyncio.wrap_future(self._future)
        try:
            return await asyncio.wait_for(asyncio.shield(wrapped), timeout)
        except TimeoutError:
            if self._future.done():
                raise
            raise self._timed_out(timeout) from None

    def _timed_out(self, timeout: float | None) -> FutureTimeoutError:
        waiting_on = self._future.waiting_on if isinstance(self._future, CallFuture) else None
        request_type, request_id = waiting_on or (None, None)
        what = (
            f"{request_type} request {request_id}"
            if waiting_on
            else "the call (no request of it was acknowledged yet)"
        )
        return FutureTimeoutError(
            f"no result within {timeout} s (result(timeout={timeout})) for {what}; it keeps "
            "running: wait again, or pass a longer timeout",
            request_id=request_id,
            request_type=request_type,
            waited_s=timeout,
        )

    def __await__(self) -> Generator[Any, None, T]:
        return self.result_async().__await__()

    async def coroutine(self) -> T:
        """This future as a coroutine, for APIs that take a coroutine rather than an
        awaitable (``asyncio.create_task(sampler.sample(...).coroutine())``)."""
        return await self.result_async()

    def done(self) -> bool:
        """Whether the result (or an error) is available."""
        return self._future.done()

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """The error the call raised, ``None`` on success (blocks like :meth:`result`)."""
        if not self._future.done():
            warn_if_in_loop("APIFuture.exception()", "`await future`")
        return self._future.exception(timeout)

    def add_done_callback(self, fn: Callable[[APIFuture[T]], object]) -> None:
        """Call ``fn(self)`` when done (on the thread that completes it)."""
        self._future.add_done_callback(lambda _: fn(self))

    def future(self) -> concurrent.futures.Future[T]:
        """The underlying ``concurrent.futures.Future``."""
        return self._future

    def __repr__(self) -> str:
        state = "done" if self._future.done() else "pending"
        return f"<APIFuture {state}>"


class ClientFuture(APIFuture[T]):
    """The future of a client (``ServiceClient.create_*``).

    As in the official SDK, it can still be used in place of the client it will hold
    (``training = service.create_lora_training_client(...); training.forward_backward(...)``):
    attribute access waits for the client and warns with a ``FutureWarning``. Prefer
    ``.result()`` or ``await``.
    """

    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        warnings.warn(
            "using the future of a client as the client is deprecated; call .result() (or "
            "await it) first",
            FutureWarning,
            stacklevel=2,
        )
        return getattr(self.result(), name)
