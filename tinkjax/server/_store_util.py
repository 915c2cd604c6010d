"""Names, ids and small conversions shared by the store's parts."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, get_args
from urllib.parse import quote

import msgspec

from ._store_errors import InvalidNameError

__all__ = [
    "KINDS",
    "KIND_TYPE",
    "LIVE",
    "CheckpointKind",
    "check_page",
    "expires_at",
    "iso",
    "model_dir_name",
    "now_iso",
    "parse_checkpoint_id",
    "parse_dt",
    "to_json",
    "utc_now",
    "validate_id",
    "validate_kind",
    "validate_name",
]

CheckpointKind = Literal["weights", "sampler_weights", "external_weights"]
KINDS: tuple[str, ...] = get_args(CheckpointKind)
KIND_TYPE = {"weights": "training", "sampler_weights": "sampler", "external_weights": "external"}
#: The SQL condition of a checkpoint that has not expired (one ``?``: :func:`now_iso`). Every
#: stored time is :func:`iso` of a UTC datetime, so the text order is the time order.
LIVE = "(expires_at IS NULL OR expires_at > ?)"
_NAME_RE = re.compile(r"[A-Za-z0-9._-]+")
_MAX_NAME = 200


def validate_name(name: object, *, field: str = "name") -> str:
    """Check a checkpoint name (or file-name segment): ``[A-Za-z0-9._-]+``, no ``..``, no leading dot.

    Raises:
        InvalidNameError: naming ``field`` and the value.
    """
    if (
        not isinstance(name, str)
        or not _NAME_RE.fullmatch(name)
        or ".." in name
        or name.startswith(".")
        or len(name) > _MAX_NAME
    ):
        raise InvalidNameError(
            f"{name!r} is not a valid name: use 1-{_MAX_NAME} characters from [A-Za-z0-9._-], "
            "not starting with '.' and without '..'",
            field=field,
            value=name,
        )
    return name


def validate_kind(kind: object) -> CheckpointKind:
    if kind not in KINDS:
        raise InvalidNameError(
            f"{kind!r} is not a checkpoint kind; expected one of {list(KINDS)}",
            field="kind",
            value=kind,
        )
    return kind  # type: ignore[return-value]


def validate_id(value: object, field: str) -> str:
    if not isinstance(value, str) or not value or "/" in value:
        raise InvalidNameError(
            f"{value!r} is not a valid id (a non-empty string without '/')",
            field=field,
            value=value,
        )
    return value


def parse_checkpoint_id(checkpoint_id: str) -> tuple[CheckpointKind, str]:
    """Split ``weights/<name>`` or ``sampler_weights/<name>`` into kind and name.

    Raises:
        InvalidNameError: naming ``checkpoint_id`` when it has another shape.
    """
    kind, sep, name = (
        checkpoint_id.partition("/") if isinstance(checkpoint_id, str) else ("", "", "")
    )
    if not sep:
        raise InvalidNameError(
            f"{checkpoint_id!r} must look like <kind>/<name> with a kind of {list(KINDS)}",
            field="checkpoint_id",
            value=checkpoint_id,
        )
    return validate_kind(kind), validate_name(name, field="checkpoint_id")


def model_dir_name(model_id: str) -> str:
    return quote(model_id, safe="").replace(".", "%2E")


def utc_now() -> datetime:
    return datetime.now(UTC)


def iso(dt: datetime) -> str:
    return dt.isoformat(timespec="microseconds")


def now_iso() -> str:
    """:func:`iso` of now: what :data:`LIVE` compares ``expires_at`` with."""
    return iso(utc_now())


def parse_dt(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


def to_json(value: Any) -> str:
    return json.dumps(msgspec.to_builtins(value), sort_keys=True)


def check_page(limit: int, offset: int) -> None:
    if not isinstance(limit, int) or limit < 0:
        raise InvalidNameError(f"{limit!r} must be an int >= 0", field="limit", value=limit)
    if not isinstance(offset, int) or offset < 0:
        raise InvalidNameError(f"{offset!r} must be an int >= 0", field="offset", value=offset)


def expires_at(now: datetime, ttl_seconds: int | None) -> str | None:
    if ttl_seconds is None:
        return None
    if not isinstance(ttl_seconds, int) or isinstance(ttl_seconds, bool) or ttl_seconds < 0:
        raise InvalidNameError(
            f"{ttl_seconds!r} must be null or an int >= 0", field="ttl_seconds", value=ttl_seconds
        )
    return iso(now + timedelta(seconds=ttl_seconds))
