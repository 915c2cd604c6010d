"""``capture_exceptions``: report an exception to a telemetry reporter and re-raise it, as a
context manager (sync and async) or a decorator (of functions and coroutine functions).

The reporter is the one given (a :class:`~._telemetry.TelemetryReporter`, or anything with a
``get_telemetry()``: a ``ServiceClient``, ``TrainingClient``...). A decorator given none uses
the decorated method's ``self`` when it has a ``get_telemetry()``, as the official SDK's
``@capture_exceptions`` does. With no reporter (telemetry off), the exception is re-raised
unreported. Reporting never raises and never replaces the exception.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, ParamSpec, TypeVar, cast, overload

from tinkjax.types import Severity

from ._telemetry import TelemetryReporter

__all__ = ["ExceptionCapture", "capture_exceptions"]

logger = logging.getLogger("tinkjax.telemetry")

P = ParamSpec("P")
R = TypeVar("R")


def reporter_of(obj: object) -> TelemetryReporter | None:
    """``obj`` if it is a reporter, else what its ``get_telemetry()`` returns (``None`` when it
    has none)."""
    if obj is None or isinstance(obj, TelemetryReporter):
        return obj
    getter = getattr(obj, "get_telemetry", None)
    if callable(getter):
        found = getter()
        return found if isinstance(found, TelemetryReporter) else None
    return None


class ExceptionCapture:
    """What :func:`capture_exceptions` returns: a context manager and a decorator."""

    def __init__(
        self, reporter: object, *, fatal: bool, severity: Severity | str, timeout: float
    ) -> None:
        self.reporter = reporter
        self.fatal = fatal
        self.severity = severity
        self.timeout = timeout

    def _report(self, exc: BaseException, target: object) -> None:
        try:
            reporter = reporter_of(target)
            if reporter is None:
                return
            if self.fatal:
                reporter.log_fatal_exception(exc, self.severity, timeout=self.timeout)
            else:
                reporter.log_exception(exc, self.severity)
        except Exception:  # reporting must never replace the user's exception
            logger.warning("could not report an exception to telemetry", exc_info=True)

    async def _report_async(self, exc: BaseException, target: object) -> None:
        try:
            reporter = reporter_of(target)
            if reporter is None:
                return
            if self.fatal:
                await reporter.log_fatal_exception_async(exc, self.severity, timeout=self.timeout)
            else:
                reporter.log_exception(exc, self.severity)
        except Exception:
            logger.warning("could not report an exception to telemetry", exc_info=True)

    # ------------------------------------------------------------ context manager
    def __enter__(self) -> ExceptionCapture:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if isinstance(exc, Exception):
            self._report(exc, self.reporter)

    async def __aenter__(self) -> ExceptionCapture:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if isinstance(exc, Exception):
            await self._report_async(exc, self.reporter)

    # ------------------------------------------------------------ decorator
    def _target(self, args: tuple[Any, ...]) -> object:
        if self.reporter is not None:
            return self.reporter
        return args[0] if args else None

    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]:
        if inspect.iscoroutinefunction(fn):
            afn = cast(Callable[..., Awaitable[Any]], fn)

            @functools.wraps(fn)
            async def awrapper(*args: Any, **kwargs: Any) -> Any:
                try:
                    return await afn(*args, **kwargs)
                except Exception as exc:
                    await self._report_async(exc, self._target(args))
                    raise

            return cast(Callable[P, R], awrapper)

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                self._report(exc, self._target(args))
                raise

        return wrapper


@overload
def capture_exceptions(  # type: ignore[overload-overlap]
    reporter: Callable[P, R], *, fatal: bool = ..., severity: Severity | str = ...
) -> Callable[P, R]: ...


@overload
def capture_exceptions(
    reporter: object = ...,
    *,
    fatal: bool = ...,
    severity: Severity | str = ...,
    timeout: float = ...,
) -> ExceptionCapture: ...


def capture_exceptions(
    reporter: object = None,
    *,
    fatal: bool = False,
    severity: Severity | str = "ERROR",
    timeout: float = 30.0,
) -> Any:
    """Report exceptions (``Exception`` subclasses) to ``reporter`` and re-raise them.

    Args:
        reporter: a :class:`TelemetryReporter`, an object with ``get_telemetry()``, or
            ``None`` (a decorated method's ``self``, else nothing is reported). Given a
            function instead (``@capture_exceptions`` without parentheses), decorates it.
        fatal: also end the session (``SESSION_END``) and flush synchronously, waiting up to
            ``timeout`` seconds, before the exception propagates.
        severity: the reported severity.

    Examples::

        with capture_exceptions(service):
            train()

        @capture_exceptions(service, fatal=True)
        def main(): ...

        async with capture_exceptions(service.telemetry_reporter):
            await train_async()
    """
    if inspect.isfunction(reporter) or inspect.ismethod(reporter):
        return ExceptionCapture(None, fatal=fatal, severity=severity, timeout=timeout)(reporter)
    if (
        reporter is not None
        and not isinstance(reporter, TelemetryReporter)
        and not callable(getattr(reporter, "get_telemetry", None))
    ):
        raise TypeError(
            f"reporter must be a TelemetryReporter or have get_telemetry(), got "
            f"{type(reporter).__name__}"
        )
    return ExceptionCapture(reporter, fatal=fatal, severity=severity, timeout=timeout)
