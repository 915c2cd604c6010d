"""Named crash points, so tests can kill the server at an exact step of a durable write.

With ``TINKJAX_CRASH_AT=<name>`` in the environment, the process kills itself with ``SIGKILL``
(as ``kill -9`` would: no cleanup, no ``finally``, no flush) when it reaches the step
``<name>``; with ``<name>:<n>``, the ``n``-th time it reaches it (so a server can acknowledge a
first save and be killed in the middle of overwriting it). Unset (the default), :func:`crash_point` is one dictionary lookup. The points of the
checkpoint store are listed in :data:`STORE_CRASH_POINTS`; tests run the store in a subprocess,
restart it and check that nothing acknowledged was lost.
"""

from __future__ import annotations

import os
import signal

__all__ = ["CRASH_ENV", "STORE_CRASH_POINTS", "crash_point"]

CRASH_ENV = "TINKJAX_CRASH_AT"

#: The steps of a checkpoint save, overwrite, delete and archive, in the order they run.
STORE_CRASH_POINTS: dict[str, tuple[str, ...]] = {
    "save": (
        "save.files_written",  # the new files are in a temp folder, fsynced
        "save.staged",  # the temp folder is renamed to its versioned name; row not committed
        "save.committed",  # the row points to the new version; the old one still on disk
        "save.cleaned",  # the old version's folder and archive removed; not yet answered
    ),
    "delete": (
        "delete.committed",  # the row is gone; the folder and archive still on disk
        "delete.cleaned",  # folder and archive removed; not yet answered
    ),
    "archive": (
        "archive.written",  # the archive is complete in a temp file, not renamed
        "archive.renamed",  # the archive is in place; the version not yet re-checked
    ),
}


_hits: dict[str, int] = {}


def crash_point(name: str) -> None:
    """Kill this process with ``SIGKILL`` when ``$TINKJAX_CRASH_AT`` names this step (and,
    with ``:<n>``, this is the ``n``-th time the step is reached)."""
    spec = os.environ.get(CRASH_ENV)
    if spec is None:
        return
    target, _, nth = spec.partition(":")
    if target != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] >= int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
