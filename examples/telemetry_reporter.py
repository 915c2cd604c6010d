"""The telemetry reporter's guarantees, shown: batching, retries of failed sends, draining,
exceptions, and an orderly, idempotent shutdown.

The ServiceClient is given an HTTP transport that answers the first two telemetry posts with
``503`` (standing in for a flaky network), so the reporter has to retry them with backoff;
nothing may be lost or reordered. Offline (the embedded local backend, the default) the events
are also read back from the backend; against the service (``TINKER_API_KEY`` set) it runs
unchanged and checks the reporter's own counts::

    python examples/telemetry_reporter.py --events 250
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

import httpx

from tinkjax import ServiceClient


class FlakyTelemetry(httpx.AsyncBaseTransport):
    """The network, except that the first ``failures`` telemetry posts get a 503."""

    def __init__(self, failures: int) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.failures = failures
        self.injected = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/api/v1/telemetry") and self.injected < self.failures:
            self.injected += 1
            return httpx.Response(503, json={"detail": "injected by the example"})
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def backend_events(service: ServiceClient, session_id: str) -> list[dict[str, Any]]:
    resp = httpx.get(
        f"{service.config.base_url}/api/v1/telemetry/events",
        params={"session_id": session_id, "limit": 1000},
        headers={"X-API-Key": service.config.api_key or ""},
    )
    resp.raise_for_status()
    found: list[dict[str, Any]] = resp.json()["events"]
    return found


def main(n_events: int = 250) -> dict[str, Any]:
    """Log ``n_events`` through two failed sends; returns what was checked."""
    flaky = FlakyTelemetry(failures=2)
    service = ServiceClient(http_transport=flaky)
    reporter = service.telemetry_reporter
    if reporter is None:
        service.close()
        print("telemetry is off (TINKER_TELEMETRY): nothing to show")
        return {"telemetry": False}
    session_id = service.session_id
    print(
        f"reporter: flush every {reporter.flush_interval:g} s or at {reporter.flush_threshold} "
        f"events, {reporter.max_batch_size} per request, {reporter.max_retries} retries"
    )
    # Batching: crossing the threshold starts a flush at once, in the background.
    for i in range(n_events):
        severity = "WARNING" if i % 50 == 49 else "INFO"
        assert reporter.log("example.step", {"step": i}, severity)
    try:
        raise ValueError("a handled error worth reporting")
    except ValueError as exc:
        reporter.log_exception(exc)
    # Draining: returns once the backend acknowledged everything queued so far.
    assert reporter.wait_until_drained(60.0), reporter
    assert flaky.injected == 2, "both injected 503s were met, and retried"
    print(f"drained: {reporter}")
    # Shutdown: SESSION_END once, a last flush; stop() again does nothing.
    assert reporter.stop() is True
    assert reporter.stop() is True
    assert reporter.log("too.late") is False
    assert reporter.dropped == 0, reporter
    expected = 1 + n_events + 1 + 1  # SESSION_START, the steps, the exception, SESSION_END
    assert reporter.sent == expected, (reporter.sent, expected)
    result: dict[str, Any] = {"telemetry": True, "sent": reporter.sent, "retried": flaky.injected}
    if service.config.embedded:
        got = backend_events(service, session_id)
        steps = [e["event_data"]["step"] for e in got if e.get("event_name") == "example.step"]
        assert steps == list(range(n_events)), "in order, nothing lost, nothing twice"
        assert [e["event_session_index"] for e in got] == list(range(expected))
        assert got[-1]["event"] == "SESSION_END"
        assert got[-2]["event"] == "UNHANDLED_EXCEPTION"
        result["backend_events"] = len(got)
    service.close()
    print(f"telemetry reporter: {result}")
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=250)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    main(args.events)
