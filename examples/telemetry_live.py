"""Telemetry, live: the reporter every ServiceClient starts, a console logger on the event API,
per-call telemetry tags, and the in-process metrics, around one real sampling call.

Offline (the embedded local backend, the default) it also reads the events back from the
backend's ``GET /api/v1/telemetry/events`` and checks them; against the service (with
``TINKER_API_KEY`` set) it runs unchanged and checks what the reporter says it delivered::

    python examples/telemetry_live.py
    TINKER_TELEMETRY=0 python examples/telemetry_live.py   # the kill switch: nothing is sent
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

import httpx

from tinkjax import ServiceClient, events, metrics
from tinkjax.types import ModelInput, SamplingParams


def pick_model(service: ServiceClient, base_model: str | None) -> str:
    """The model asked for; offline the smallest one, else the service's first sampleable."""
    if base_model is not None:
        return base_model
    if service.config.embedded:
        return "tinkjax/bytelm-micro"
    models = service.get_server_capabilities().supported_models
    return next(m.model_name for m in models if m.model_name and m.sampleable is not False)


def backend_events(service: ServiceClient, session_id: str) -> list[dict[str, Any]]:
    """The local backend's copy of the session's events (a tinkjax endpoint)."""
    resp = httpx.get(
        f"{service.config.base_url}/api/v1/telemetry/events",
        params={"session_id": session_id, "limit": 1000},
        headers={"X-API-Key": service.config.api_key or ""},
    )
    resp.raise_for_status()
    found: list[dict[str, Any]] = resp.json()["events"]
    return found


def main(base_model: str | None = None, max_tokens: int = 8) -> dict[str, Any]:
    """Sample once with telemetry on; returns what was checked."""
    logger_id = events.attach_logger(level=logging.INFO)
    try:
        with ServiceClient() as service:
            reporter = service.get_telemetry()
            model = pick_model(service, base_model)
            if reporter is not None:
                reporter.log("example.telemetry_live.start", {"base_model": model})
            sampler = service.create_sampling_client(base_model=model).result()
            with events.telemetry_metadata(request_id="demo-123"):
                response = sampler.sample(
                    ModelInput.from_ints([72, 101, 108, 108, 111]),
                    num_samples=1,
                    sampling_params=SamplingParams(max_tokens=max_tokens, temperature=0.7),
                ).result()
            tokens = response.sequences[0].tokens
            assert 0 < len(tokens) <= max_tokens, tokens
            session_id = service.session_id
            embedded = service.config.embedded
            if reporter is not None:
                reporter.log("example.telemetry_live.sampled", {"tokens": len(tokens)})
                assert reporter.wait_until_drained(30.0), reporter
        # leaving the block stopped the reporter: SESSION_END went out with the last batch
    finally:
        events.detach(logger_id)

    snap = metrics.snapshot()
    sample_calls = snap.counter("tinkjax_requests_total", path="/api/v1/asample")
    assert sample_calls >= 1, snap.to_dict()["counters"]
    latency = snap.histogram(
        "tinkjax_request_duration_seconds", method="POST", path="/api/v1/asample"
    )
    assert latency is not None
    print(f"asample: {latency.count} requests, p50 {latency.p50 * 1e3:.1f} ms")
    result: dict[str, Any] = {"tokens": len(tokens), "telemetry": reporter is not None}
    if reporter is None:
        print("telemetry is off (TINKER_TELEMETRY): nothing was sent")
        return result
    assert reporter.stopped, reporter
    assert reporter.dropped == 0, reporter
    result["sent"] = reporter.sent
    if embedded:
        got = backend_events(service, session_id)
        kinds = [e.get("event_name") or e["event"] for e in got]
        assert kinds[0] == "SESSION_START", kinds
        assert kinds[-1] == "SESSION_END", kinds
        assert "example.telemetry_live.start" in kinds
        assert "example.telemetry_live.sampled" in kinds
        tagged = [
            e
            for e in got
            if e.get("event_name") == "tinkjax.request.stop"
            and e["event_data"]["metadata"]["telemetry_metadata"].get("request_id") == "demo-123"
        ]
        assert tagged, "the sampling request's events carry the per-call tag"
        result["backend_events"] = len(got)
    print(f"telemetry: {result}")
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-model", default=None)
    parser.add_argument("--max-tokens", type=int, default=8)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s %(levelname)s %(message)s")
    main(args.base_model, args.max_tokens)
