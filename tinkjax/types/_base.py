"""Base class of every wire type and the helpers they share.

Wire types are msgspec Structs, ``frozen=True, kw_only=True``: immutable, hashable where their
fields are, and decoded by msgspec without an intermediate dict. Field names are the wire names.
New fields always get defaults so old payloads still decode.
"""

from __future__ import annotations

from typing import Any

import msgspec

__all__ = ["StrictWire", "Wire"]


class Wire(msgspec.Struct, frozen=True, kw_only=True):
    """A wire type that ignores unknown fields when decoded (responses, forward-compatible)."""


class StrictWire(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A wire type that rejects unknown fields when decoded (requests, as the service does)."""


def replace(obj: Any, **changes: Any) -> Any:
    """A copy of ``obj`` with ``changes`` applied (``msgspec.structs.replace``)."""
    return msgspec.structs.replace(obj, **changes)
