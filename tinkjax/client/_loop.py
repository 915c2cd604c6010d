"""The client's event loop, run on one background daemon thread per process.

Every request coroutine runs there, so synchronous calls work from plain scripts and from
notebooks (whose own loop is already running) alike. Calls are scheduled with the caller's
``contextvars`` context, so per-call telemetry metadata travels with them.

A blocking call (``future.result()``, ``get_info()``) made inside a running asyncio loop blocks
that loop until the result arrives: in an ``asyncio.run`` program that stalls every other task,
so it warns and names the async twin (:func:`warn_if_in_loop`). A Jupyter cell is the exception,
as in the official SDK: the kernel runs each cell inside its own loop, on the main thread, and
a cell that blocks is what every cell does; the request itself runs on the client loop's
thread, so nothing deadlocks and no warning is due. On the client loop's own thread a blocking
call would wait on itself forever, so it raises.

Each call's future (:class:`CallFuture`) also says what the call is waiting on: code running
for the call (the future poll loop) records it with :func:`note_waiting_on`, and
``APIFuture.result(timeout)`` names it when the timeout passes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import sys
import threading
import warnings
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = [
    "CallFuture",
    "get_loop",
    "in_notebook_cell",
    "in_running_loop",
    "note_waiting_on",
    "on_loop_thread",
    "submit",
    "warn_if_in_loop",
]

T = TypeVar("T")


class CallFuture(concurrent.futures.Future[T]):
    """The future of one :func:`submit`-ted call.

    Attributes:
        waiting_on: ``(request_type, request_id)`` of the request the call waits on now
            (``("ForwardBackward", "req-7")``), or ``None`` before any request of it was
            acknowledged.
    """

    def __init__(self) -> None:
        super().__init__()
        self.waiting_on: tuple[str, str] | None = None


_current_call: contextvars.ContextVar[CallFuture[Any] | None] = contextvars.ContextVar(
    "tinkjax_current_call", default=None
)


def note_waiting_on(request_type: str, request_id: str) -> None:
    """Record, on the future of the call running now (if any), the request it waits on."""
    call = _current_call.get()
    if call is not None:
        call.waiting_on = (request_type, request_id)


_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_thread: threading.Thread | None = None


def get_loop() -> asyncio.AbstractEventLoop:
    """The background loop, started on first use."""
    global _loop, _thread
    loop = _loop
    if loop is not None:
        return loop
    with _lock:
        if _loop is None:
            new_loop = asyncio.new_event_loop()
            ready = threading.Event()

            def run() -> None:
                asyncio.set_event_loop(new_loop)
                new_loop.call_soon(ready.set)
                new_loop.run_forever()

            _thread = threading.Thread(target=run, name="tinkjax-client-loop", daemon=True)
            _thread.start()
            ready.wait()
            _loop = new_loop
        return _loop


def on_loop_thread() -> bool:
    """Whether the caller runs on the client loop's thread."""
    return _thread is not None and threading.current_thread() is _thread


def in_running_loop() -> bool:
    """Whether the caller runs inside some running asyncio loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def in_notebook_cell() -> bool:
    """Whether the caller is a Jupyter cell: the main thread of an IPython kernel (its shell
    is a ``ZMQInteractiveShell``, Colab's included)."""
    if threading.current_thread() is not threading.main_thread():
        return False
    ipython = sys.modules.get("IPython")
    get_ipython = getattr(ipython, "get_ipython", None)
    shell = get_ipython() if callable(get_ipython) else None
    return shell is not None and any(
        cls.__name__ == "ZMQInteractiveShell" for cls in type(shell).__mro__
    )


def submit(coro: Coroutine[Any, Any, T]) -> CallFuture[T]:
    """Schedule ``coro`` on the client loop in the caller's context; return its future."""
    loop = get_loop()
    ctx = contextvars.copy_context()
    result: CallFuture[T] = CallFuture()
    ctx.run(_current_call.set, result)  # ctx is the call's own copy: the caller is unchanged

    def start() -> None:
        if not result.set_running_or_notify_cancel():
            coro.close()
            return
        task = loop.create_task(coro, context=ctx)

        def done(t: asyncio.Task[T]) -> None:
            if t.cancelled():
                result.cancel()
            elif (exc := t.exception()) is not None:
                result.set_exception(exc)
            else:
                result.set_result(t.result())

        task.add_done_callback(done)

    if on_loop_thread():
        start()
    else:
        loop.call_soon_threadsafe(start)
    return result


def warn_if_in_loop(sync_name: str, async_name: str) -> None:
    """Refuse to block the client loop; warn when blocking some other running loop, except
    a Jupyter cell's (see the module docstring).

    Raises:
        RuntimeError: called on the client loop's own thread (it would deadlock).
    """
    if on_loop_thread():
        raise RuntimeError(
            f"{sync_name} blocks and cannot run on the tinkjax client loop; use {async_name}"
        )
    if in_running_loop() and not in_notebook_cell():
        warnings.warn(
            f"{sync_name} was called inside a running event loop and blocks it; "
            f"use {async_name} instead",
            RuntimeWarning,
            stacklevel=3,
        )
