"""Compiling a runtime's programs before they are needed, on a background thread.

A runtime's training programs have a small, fixed set of shapes for a given adapter stack: per
``(loss, length bucket)`` one forward program and one forward/backward program per power of two
of adapters in a call (the rows of a call never change a shape: ``chunk_shape``), plus the
optimizer step. :class:`Warmup` compiles the ones a runtime asks for, one at a time, on its own
thread (XLA releases the GIL while it compiles, and every program is called on zero arrays of
its shapes: no runtime state is read or written), so the worker thread keeps serving requests.
A call that needs a program the warm-up is compiling at that moment waits for it
(:meth:`Warmup.claim`); one whose program is only queued takes it off the queue and compiles it
itself, as it would without a warm-up. JAX's persistent compilation cache (when enabled) serves
the warm-up's compiles as it serves any other.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable, Sequence

__all__ = ["Warmup"]

_log = logging.getLogger("tinkjax.models")


class Warmup:
    """A queue of program shapes compiled by a daemon thread.

    Args:
        compile_fn: compiles (and runs once, on zeros) the program of one shape key.
        settle_s: how long the queue must stay unchanged before the next compile starts, so a
            burst of adapter creations (each may change the stack's shape) compiles only the
            shapes of the stack it ends with.
    """

    def __init__(self, compile_fn: Callable[[Hashable], None], *, settle_s: float = 0.25) -> None:
        self._compile = compile_fn
        self._settle_s = settle_s
        self._cond = threading.Condition()
        self._queue: list[Hashable] = []
        self._running: Hashable | None = None
        self._done: set[Hashable] = set()
        self._changed = 0.0
        self._active = False  # a thread runs _loop (set and cleared under the lock)
        self.compiled = 0
        """How many shapes the warm-up thread compiled."""

    def request(self, keys: Sequence[Hashable]) -> None:
        """Compile ``keys`` (in this order) that are not compiled yet; replaces what was queued
        (a shape of a stack that has grown since is no longer needed)."""
        with self._cond:
            self._queue = [k for k in dict.fromkeys(keys) if k not in self._done]
            self._changed = time.monotonic()
            if self._queue and not self._active:
                self._active = True
                threading.Thread(target=self._loop, name="tinkjax-warmup", daemon=True).start()
            self._cond.notify_all()

    def claim(self, key: Hashable) -> None:
        """Called before running the program of ``key``: waits while the warm-up compiles it,
        takes it off the queue otherwise; from now on it counts as compiled."""
        with self._cond:
            while self._running == key:
                self._cond.wait()
            if key in self._queue:
                self._queue.remove(key)
            self._done.add(key)

    def pending(self) -> int:
        """Shapes queued or being compiled."""
        with self._cond:
            return len(self._queue) + (self._running is not None)

    def wait(self, timeout: float | None = None) -> bool:
        """Waits until nothing is queued or compiling; ``False`` if ``timeout`` ran out."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._queue or self._running is not None:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def _loop(self) -> None:
        while True:
            with self._cond:
                while self._queue and time.monotonic() - self._changed < self._settle_s:
                    self._cond.wait(self._settle_s)
                if not self._queue:
                    self._active = False
                    return
                key = self._running = self._queue.pop(0)
            try:
                self._compile(key)
            except Exception:  # an optimisation only: the call compiles it when it comes
                _log.exception("warm-up of %r failed", key)
            with self._cond:
                self._running = None
                self._done.add(key)
                self.compiled += 1
                self._cond.notify_all()
