"""REST resources: training runs, checkpoints, sessions, samplers, and ``tinker://`` paths."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Literal

from tinkjax.errors import WireFormatError

from ._base import Wire

__all__ = [
    "Checkpoint",
    "CheckpointType",
    "CheckpointsListResponse",
    "Cursor",
    "ExternalWeightsUrlsResponse",
    "GetSessionResponse",
    "ListSessionsResponse",
    "ParsedCheckpointTinkerPath",
    "TrainingRun",
    "TrainingRunsResponse",
    "check_resource_id",
    "parse_tinker_path",
]

CheckpointType = Literal["training", "sampler", "external"]

_KIND_TO_TYPE: dict[str, CheckpointType] = {
    "weights": "training",
    "sampler_weights": "sampler",
    "external_weights": "external",
}


class Cursor(Wire, frozen=True, kw_only=True):
    offset: int
    limit: int
    total_count: int


class Checkpoint(Wire, frozen=True, kw_only=True):
    checkpoint_id: str
    checkpoint_type: CheckpointType
    time: datetime
    tinker_path: str
    size_bytes: int | None = None
    public: bool = False
    user_metadata: dict[str, str] | None = None
    expires_at: datetime | None = None


class CheckpointsListResponse(Wire, frozen=True, kw_only=True):
    checkpoints: list[Checkpoint]
    cursor: Cursor | None = None


class TrainingRun(Wire, frozen=True, kw_only=True):
    training_run_id: str
    base_model: str
    model_owner: str
    is_lora: bool
    last_request_time: datetime
    corrupted: bool = False
    lora_rank: int | None = None
    last_checkpoint: Checkpoint | None = None
    last_sampler_checkpoint: Checkpoint | None = None
    user_metadata: dict[str, str] | None = None


class TrainingRunsResponse(Wire, frozen=True, kw_only=True):
    training_runs: list[TrainingRun]
    cursor: Cursor


class ListSessionsResponse(Wire, frozen=True, kw_only=True):
    sessions: list[str]


class GetSessionResponse(Wire, frozen=True, kw_only=True):
    training_run_ids: list[str]
    sampler_ids: list[str]
    user_metadata: dict[str, str] | None = None
    display_name: str | None = None


class ExternalWeightsUrlsResponse(Wire, frozen=True, kw_only=True):
    urls: dict[str, str]
    expires: datetime


class ParsedCheckpointTinkerPath(Wire, frozen=True, kw_only=True):
    """The parts of ``tinker://{training_run_id}/{kind}/{name}``."""

    tinker_path: str
    training_run_id: str
    checkpoint_type: CheckpointType
    checkpoint_id: str

    @classmethod
    def from_tinker_path(cls, tinker_path: str) -> ParsedCheckpointTinkerPath:
        """Parse ``tinker_path`` (the official SDK's constructor; same as
        :func:`parse_tinker_path`, whose ``WireFormatError`` is a ``ValueError``)."""
        return parse_tinker_path(tinker_path)

    @property
    def name(self) -> str:
        """The checkpoint's name (the part after the kind)."""
        return self.checkpoint_id.split("/", 1)[1]

    @property
    def kind(self) -> str:
        """``weights``, ``sampler_weights`` or ``external_weights``."""
        return self.checkpoint_id.split("/", 1)[0]


#: What a resource id (training run, session, sampler) or checkpoint name may contain: URL
#: path characters that need no escaping, so the id is one path segment as it stands.
_ID_RE = re.compile(r"[A-Za-z0-9._:~-]+")


def check_resource_id(value: object, *, field: str) -> str:
    """``value`` if it is a valid id or checkpoint name, else ``WireFormatError``.

    Valid: a non-empty string of ``[A-Za-z0-9._:~-]`` other than ``.`` and ``..`` (which a
    URL would resolve as path steps). Ids travel in REST paths, so ``/``, ``?``, ``#``, ``%``
    and spaces are refused rather than guessed at.

    Args:
        value: the id.
        field: what it is (``training_run_id``, ...), named in the error.

    Raises:
        WireFormatError: naming ``field`` and the value.
    """
    if not isinstance(value, str) or not _ID_RE.fullmatch(value) or value in (".", ".."):
        raise WireFormatError(
            f"{field} {value!r} is not a valid id: use characters from "
            "[A-Za-z0-9._:~-], not '.' or '..'",
            field=field,
        )
    return value


def parse_tinker_path(path: str) -> ParsedCheckpointTinkerPath:
    """Parse a checkpoint path ``tinker://{training_run_id}/{kind}/{name}``.

    Raises:
        WireFormatError: naming the path when it has the wrong scheme, not exactly three
            ``/``-separated parts, an empty part, an unknown kind, or a run id or name that
            is not a valid id (:func:`check_resource_id`).
    """
    prefix = "tinker://"
    if not isinstance(path, str) or not path.startswith(prefix):
        raise WireFormatError(f"{path!r} does not start with {prefix!r}", field="tinker_path")
    parts = path[len(prefix) :].split("/")
    if len(parts) != 3 or not all(parts):
        raise WireFormatError(
            f"{path!r} must look like tinker://<training_run_id>/<kind>/<name>",
            field="tinker_path",
        )
    run_id, kind, name = parts
    if kind not in _KIND_TO_TYPE:
        raise WireFormatError(
            f"{path!r} has kind {kind!r}; expected one of {sorted(_KIND_TO_TYPE)}",
            field="tinker_path",
        )
    for part, what in ((run_id, "training run id"), (name, "checkpoint name")):
        try:
            check_resource_id(part, field=what)
        except WireFormatError as exc:
            raise WireFormatError(f"{path!r}: {exc}", field="tinker_path") from None
    return ParsedCheckpointTinkerPath(
        tinker_path=path,
        training_run_id=run_id,
        checkpoint_type=_KIND_TO_TYPE[kind],
        checkpoint_id=f"{kind}/{name}",
    )
