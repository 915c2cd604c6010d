"""Retry and capture: ``with_retry`` (sync and async) around calls of your own, with a
``RetryHandler`` and the retry events it emits, and ``capture_exceptions`` reporting errors to
the session's telemetry before they propagate.

The "flaky" call fails twice with a connection error before it reaches the service; a call
for a training run that does not exist fails with a 404, which is not retried. Runs offline on
the embedded local backend (the default) and unchanged against the service
(``TINKER_API_KEY`` set)::

    python examples/retry_and_capture.py
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from typing import Any

import httpx

from tinkjax import ServiceClient, events
from tinkjax.client import (
    RestClient,
    RetryHandler,
    capture_exceptions,
    with_retry,
    with_retry_async,
)
from tinkjax.errors import APIConnectionError, NotFoundError


class Flaky:
    """Fails ``failures`` times with a connection error, then lists training runs."""

    def __init__(self, rest: RestClient, failures: int) -> None:
        self.rest = rest
        self.left = failures

    def __call__(self) -> int:
        if self.left > 0:
            self.left -= 1
            raise APIConnectionError("simulated: connection reset")
        return len(self.rest.list_training_runs(limit=5).result().training_runs)

    async def call_async(self) -> int:
        if self.left > 0:
            self.left -= 1
            raise APIConnectionError("simulated: connection reset")
        runs = await self.rest.list_training_runs(limit=5)
        return len(runs.training_runs)


def backend_events(service: ServiceClient, session_id: str) -> list[dict[str, Any]]:
    resp = httpx.get(
        f"{service.config.base_url}/api/v1/telemetry/events",
        params={"session_id": session_id, "limit": 1000},
        headers={"X-API-Key": service.config.api_key or ""},
    )
    resp.raise_for_status()
    found: list[dict[str, Any]] = resp.json()["events"]
    return found


def main(failures: int = 2) -> dict[str, Any]:
    """Runs the demo; returns what was checked."""
    seen: list[tuple[str, dict[str, Any]]] = []
    names = ["tinkjax.retry.start", "tinkjax.retry.attempt", "tinkjax.retry.stop"]
    names.append("tinkjax.retry.failed")
    events.attach("example.retry", names, lambda n, m, md: seen.append((n[-1], {**m, **md})))
    handler = RetryHandler(max_retries=4, base_delay=0.05, max_delay=1.0, jitter=0.25, name="runs")
    try:
        with ServiceClient() as service:
            rest = service.create_rest_client()
            session_id = service.session_id
            reporter = service.get_telemetry()

            # 1. with_retry: two simulated connection errors, then the real call.
            runs = with_retry(Flaky(rest, failures), handler, metadata={"demo": "sync"})
            attempts = [m for kind, m in seen if kind == "attempt"]
            assert len(attempts) == failures, seen
            assert all(0.75 * 0.05 <= m["delay_s"] <= 1.0 for m in attempts)
            assert seen[-1][0] == "stop"
            assert seen[-1][1]["attempts"] == failures + 1

            # 2. The async twin, on your own event loop.
            seen.clear()
            flaky = Flaky(rest, failures)
            runs_async = asyncio.run(with_retry_async(flaky.call_async, handler))
            assert runs_async == runs
            assert [kind for kind, _ in seen] == ["start"] + ["attempt"] * failures + ["stop"]

            # 3. What does not retry: a 404 is raised at once; capture_exceptions reports it.
            seen.clear()
            try:
                with capture_exceptions(service):
                    with_retry(lambda: rest.get_training_run("no-such-run").result(), handler)
            except NotFoundError as exc:
                not_found = exc
            else:
                raise AssertionError("expected a NotFoundError")
            assert [kind for kind, _ in seen] == ["start", "failed"]
            assert seen[-1][1]["reason"] == "not_retryable"

            # 4. capture_exceptions as a decorator: report, then re-raise.
            @capture_exceptions(service, severity="CRITICAL")
            def train_step() -> None:
                raise RuntimeError("the step diverged")

            try:
                train_step()
            except RuntimeError:
                pass
            else:
                raise AssertionError("capture_exceptions must re-raise")
            if reporter is not None:
                assert reporter.wait_until_drained(30.0), reporter
            embedded = service.config.embedded
    finally:
        events.detach("example.retry")

    result: dict[str, Any] = {
        "runs": runs,
        "retries": failures,
        "not_retried": type(not_found).__name__,
    }
    if reporter is not None and embedded:
        got = backend_events(service, session_id)
        user_errors = [e for e in got if e.get("event_name") == "user_error"]
        assert user_errors[0]["event_data"]["status_code"] == 404  # a user error, not a crash
        crash = next(e for e in got if e["event"] == "UNHANDLED_EXCEPTION")
        assert crash["error_message"] == "the step diverged"
        assert crash["severity"] == "CRITICAL"
        result["reported"] = len(user_errors) + 1
    print(f"retry and capture: {result}")
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--failures", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    main(args.failures)
