"""Errors :class:`~tinkjax.server._store.Store` raises on purpose."""

from __future__ import annotations

from tinkjax.errors import TinkerError, WireFormatError

__all__ = [
    "DuplicateIdError",
    "InvalidNameError",
    "StoreError",
    "UnknownCheckpointError",
    "UnknownIdError",
    "UnknownSamplerError",
    "UnknownSessionError",
    "UnknownTrainingRunError",
]


class StoreError(TinkerError):
    """Base class of the errors :class:`~tinkjax.server._store.Store` raises on purpose."""


class UnknownIdError(StoreError, KeyError):
    """Base class of the "no such id" errors; ``.key`` is the id."""

    what = "id"

    def __init__(self, key: str) -> None:
        super().__init__(f"unknown {self.what} {key!r}")
        self.key = key

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class UnknownSessionError(UnknownIdError):
    """No session with this id (``.key``)."""

    what = "session_id"


class UnknownTrainingRunError(UnknownIdError):
    """No training run (model) with this id (``.key``)."""

    what = "model_id"


class UnknownCheckpointError(UnknownIdError):
    """No checkpoint with this id or tinker path (``.key``)."""

    what = "checkpoint"


class UnknownSamplerError(UnknownIdError):
    """No sampler with this id (``.key``)."""

    what = "sampler_id"


class DuplicateIdError(StoreError, ValueError):
    """A session, training run or sampler with this id already exists (``.field``, ``.value``)."""

    def __init__(self, field: str, value: str) -> None:
        super().__init__(f"{field}: {value!r} already exists")
        self.field = field
        self.value = value


class InvalidNameError(StoreError, WireFormatError):
    """A checkpoint name, kind, file name or id that is not allowed (``.field``, ``.value``)."""

    def __init__(self, message: str, *, field: str, value: object) -> None:
        super().__init__(message, field=field)
        self.value = value
