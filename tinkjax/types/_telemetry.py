"""Telemetry events as the service accepts them (``POST /api/v1/telemetry``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import msgspec

from ._base import StrictWire, Wire

__all__ = [
    "EventType",
    "GenericEvent",
    "SessionEndEvent",
    "SessionStartEvent",
    "Severity",
    "TelemetryBatch",
    "TelemetryEvent",
    "TelemetryResponse",
    "TelemetrySendRequest",
    "UnhandledExceptionEvent",
]

EventType = Literal["SESSION_START", "SESSION_END", "UNHANDLED_EXCEPTION", "GENERIC_EVENT"]
Severity = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


class SessionStartEvent(Wire, frozen=True, kw_only=True, tag="SESSION_START", tag_field="event"):
    event_id: str
    event_session_index: int
    severity: Severity
    timestamp: datetime


class SessionEndEvent(Wire, frozen=True, kw_only=True, tag="SESSION_END", tag_field="event"):
    event_id: str
    event_session_index: int
    severity: Severity
    timestamp: datetime
    duration: str


class UnhandledExceptionEvent(
    Wire, frozen=True, kw_only=True, tag="UNHANDLED_EXCEPTION", tag_field="event"
):
    event_id: str
    event_session_index: int
    severity: Severity
    timestamp: datetime
    error_type: str
    error_message: str
    traceback: str | None = None


class GenericEvent(Wire, frozen=True, kw_only=True, tag="GENERIC_EVENT", tag_field="event"):
    event_id: str
    event_session_index: int
    severity: Severity
    timestamp: datetime
    event_name: str
    event_data: dict[str, Any] = msgspec.field(default_factory=dict)


TelemetryEvent = SessionStartEvent | SessionEndEvent | UnhandledExceptionEvent | GenericEvent


class TelemetrySendRequest(StrictWire, frozen=True, kw_only=True):
    events: list[TelemetryEvent]
    platform: str
    sdk_version: str
    session_id: str
    process_uuid: str


TelemetryBatch = TelemetrySendRequest


class TelemetryResponse(Wire, frozen=True, kw_only=True):
    status: Literal["accepted"]
