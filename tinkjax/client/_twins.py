"""Sync/async twins from one definition.

Every public call comes as ``foo`` / ``foo_async`` (the official SDK's names). One of the two is
written; the other is derived here, with the same parameters (``ParamSpec``, so mypy and IDEs
check calls to both), the same docstring under an "Async twin of" / "Blocking twin of" line, and a
``__signature__`` for ``help()`` and ``inspect``. Three shapes cover the client:

- :func:`awaiting` — ``foo`` returns an awaitable (``APIFuture[T]``); ``foo_async`` awaits it and
  returns ``T``. ``get_training_run`` / ``get_training_run_async``.
- :func:`submitting` — ``foo`` submits and returns ``APIFuture[T]``; ``foo_async`` is a coroutine
  that submits the same way and returns the future, so ``await tc.forward_backward_async(...)``
  gives a future to await later (the official SDK's pipelining idiom).
- :func:`blocking` — ``foo_async`` is the coroutine; ``foo`` runs it on the client loop and
  blocks for the result, warning when called inside a running event loop.

Use in a class body, after the written method::

    def list_checkpoints(self, training_run_id: str) -> APIFuture[CheckpointsListResponse]: ...

    list_checkpoints_async = awaiting(list_checkpoints)
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Concatenate, ParamSpec, TypeVar

from ._loop import submit, warn_if_in_loop

__all__ = ["awaiting", "blocking", "submitting"]

S = TypeVar("S")
P = ParamSpec("P")
R = TypeVar("R")

#: ``APIFuture[X]`` / ``ClientFuture[X]`` → ``X``: what awaiting the future gives.
_FUTURE_OF = re.compile(r"^(?:APIFuture|ClientFuture|Awaitable)\[(.*)\]$")


def _named(
    twin: Callable[..., Any],
    source: Callable[..., Any],
    name: str,
    role: str,
    returns: Any,
) -> None:
    """Give ``twin`` its own name, the source's docstring under ``role``, and a signature."""
    functools.update_wrapper(twin, source)
    twin.__name__ = name
    twin.__qualname__ = f"{source.__qualname__.rpartition('.')[0]}.{name}".lstrip(".")
    doc = inspect.getdoc(source) or ""
    twin.__doc__ = f"{role} of :meth:`{source.__name__}`.\n\n{doc}".rstrip()
    signature = inspect.signature(source)
    twin.__signature__ = signature.replace(  # type: ignore[attr-defined]
        return_annotation=returns(signature.return_annotation)
    )
    del twin.__wrapped__  # type: ignore[attr-defined]  # help() shows the twin's own signature


def _awaited(annotation: Any) -> Any:
    if isinstance(annotation, str) and (match := _FUTURE_OF.match(annotation)):
        return match.group(1)
    return inspect.Signature.empty


def awaiting(
    sync: Callable[Concatenate[S, P], Awaitable[R]],
) -> Callable[Concatenate[S, P], Coroutine[Any, Any, R]]:
    """``foo_async`` from ``foo``: the same call, awaited (returns the future's result)."""

    async def twin(self: S, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return await sync(self, *args, **kwargs)

    _named(twin, sync, f"{sync.__name__}_async", "Async twin", _awaited)
    return twin


def submitting(
    sync: Callable[Concatenate[S, P], R],
) -> Callable[Concatenate[S, P], Coroutine[Any, Any, R]]:
    """``foo_async`` from ``foo``: a coroutine that submits as ``foo`` does and returns its future."""

    async def twin(self: S, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return sync(self, *args, **kwargs)

    _named(twin, sync, f"{sync.__name__}_async", "Async twin", lambda annotation: annotation)
    return twin


def blocking(
    coroutine: Callable[Concatenate[S, P], Coroutine[Any, Any, R]],
) -> Callable[Concatenate[S, P], R]:
    """``foo`` from ``foo_async``: runs the coroutine on the client loop and waits for it."""
    name = coroutine.__name__.removesuffix("_async")
    if name == coroutine.__name__:
        raise ValueError(f"blocking() derives foo from foo_async, got {coroutine.__name__!r}")
    owner = coroutine.__qualname__.rpartition(".")[0] or "client"
    hint = f"`await {owner[0].lower() + owner[1:]}.{coroutine.__name__}(...)`"

    def twin(self: S, /, *args: P.args, **kwargs: P.kwargs) -> R:
        warn_if_in_loop(f"{owner}.{name}()", hint)
        return submit(coroutine(self, *args, **kwargs)).result()

    _named(twin, coroutine, name, "Blocking twin", lambda annotation: annotation)
    return twin
