"""REST paths built from ids: every id is checked (:func:`tinkjax.types.check_resource_id`)
and percent-escaped before it becomes a path segment, so an id can never add, remove or
resolve away a segment (``..``), nor start a query (``?``) or a fragment (``#``)."""

from __future__ import annotations

from urllib.parse import quote

from tinkjax.errors import WireFormatError
from tinkjax.types import check_resource_id, parse_tinker_path

__all__ = ["checkpoint_path", "id_segment"]


def id_segment(value: str, field: str) -> str:
    """``value`` as one escaped path segment.

    Raises:
        WireFormatError: ``value`` is not a valid id (naming ``field`` and the value).
    """
    return quote(check_resource_id(value, field=field), safe=":")


def checkpoint_path(training_run_id: str, checkpoint_id: str) -> str:
    """``/api/v1/training_runs/{run}/checkpoints/{kind}/{name}`` of a checkpoint
    (``checkpoint_id`` like ``weights/final``).

    Raises:
        WireFormatError: a part is not a valid id, or ``checkpoint_id`` is not
            ``<kind>/<name>`` with a known kind (naming the value).
    """
    run = id_segment(training_run_id, "training_run_id")
    if not isinstance(checkpoint_id, str):
        raise WireFormatError(
            f"checkpoint_id {checkpoint_id!r} is not a string", field="checkpoint_id"
        )
    kind, _, name = checkpoint_id.partition("/")
    try:
        check_resource_id(name, field="checkpoint name")
        parse_tinker_path(f"tinker://{training_run_id}/{checkpoint_id}")  # the kind is known
    except WireFormatError as exc:
        raise WireFormatError(
            f"checkpoint_id {checkpoint_id!r}: {exc}", field="checkpoint_id"
        ) from None
    return f"/api/v1/training_runs/{run}/checkpoints/{kind}/{quote(name, safe=':')}"
