"""tinkjax.metrics: histogram percentiles against NumPy, the registry, the default collector fed
by events, and both exporters parsed back by their own libraries."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from tinkjax import events, metrics
from tinkjax.metrics import Collector, Histogram, Registry, normalize_path


@pytest.mark.parametrize("n", [1, 2, 7, 100, 4096])
def test_percentiles_are_numpys_while_the_reservoir_holds_everything(n: int) -> None:
    rng = np.random.default_rng(n)
    values = rng.lognormal(mean=-3.0, sigma=1.0, size=n)
    h = Histogram()
    for v in values:
        h.observe(v)
    s = h.summary()
    assert s is not None
    want = np.percentile(values, [50, 95, 99])
    assert [s.p50, s.p95, s.p99] == pytest.approx(want, rel=1e-12)
    assert s.count == n
    assert s.sum == pytest.approx(values.sum(), rel=1e-12)
    assert s.mean == pytest.approx(values.mean(), rel=1e-12)
    assert (s.min, s.max) == (values.min(), values.max())


def test_beyond_capacity_the_aggregates_stay_exact_and_the_percentiles_close() -> None:
    rng = np.random.default_rng(0)
    values = rng.lognormal(mean=0.0, sigma=1.5, size=50_000)
    h = Histogram(capacity=2048, seed=1)
    for v in values:
        h.observe(v)
    s = h.summary()
    assert s is not None
    assert len(h.values()) == 2048  # memory bounded
    assert s.count == values.size
    assert s.sum == pytest.approx(values.sum(), rel=1e-9)
    assert (s.min, s.max) == (values.min(), values.max())
    # the estimate's rank in the full data is within 4 standard errors sqrt(p(1-p)/capacity)
    for p, est in ((0.5, s.p50), (0.95, s.p95), (0.99, s.p99)):
        rank = float(np.mean(values <= est))
        assert abs(rank - p) < 4 * math.sqrt(p * (1 - p) / 2048) + 1e-3, (p, rank)


def test_non_finite_values_are_not_observed_and_an_empty_histogram_has_no_summary() -> None:
    h = Histogram()
    assert h.summary() is None
    h.observe(float("nan"))
    h.observe(float("inf"))
    assert h.summary() is None
    with pytest.raises(ValueError, match="capacity"):
        Histogram(capacity=0)


def test_registry_counters_gauges_snapshot_and_reset() -> None:
    r = Registry()
    r.increment("hits_total", path="/a", status=200)
    r.increment("hits_total", 2, path="/a", status=500)
    r.increment("hits_total", path="/b", status=200)
    r.set_gauge("depth", 3.0, queue="x")
    r.set_gauge("depth", 5.0, queue="x")
    snap = r.snapshot()
    r.increment("hits_total", path="/a", status=200)  # the snapshot is a copy
    assert snap.counter("hits_total") == 4
    assert snap.counter("hits_total", path="/a") == 3
    assert snap.counter("hits_total", status=200) == 2
    assert snap.counter("missing") == 0
    assert snap.gauge("depth", queue="x") == 5.0
    assert snap.gauge("depth") is None
    d = snap.to_dict()
    assert {"labels": {"path": "/b", "status": "200"}, "value": 1.0} in d["counters"]["hits_total"]
    r.reset()
    assert r.snapshot().counters == {}
    with pytest.raises(ValueError, match="hits_total"):
        r.increment("hits_total", -1)
    with pytest.raises(ValueError, match="depth"):
        r.set_gauge("depth", float("nan"))


def test_label_sets_per_metric_are_capped() -> None:
    r = Registry(max_series=3)
    for i in range(10):
        r.increment("ids_total", id=i)
        r.observe("lat_seconds", 0.1, id=i)
    snap = r.snapshot()
    assert len(snap.counters["ids_total"]) == 3
    assert len(snap.histograms["lat_seconds"]) == 3
    assert r.dropped_series == 14


@pytest.mark.parametrize(
    ("path", "want"),
    [
        ("/api/v1/forward_backward", "/api/v1/forward_backward"),
        (
            "/api/v1/sessions/3f2b8c1e-6c1d-4a8b-9a55-0f3e8d2b7c10/finish",
            "/api/v1/sessions/{id}/finish",
        ),
        (
            "/api/v1/training_runs/model-abc:train:0/checkpoints",
            "/api/v1/training_runs/{id}/checkpoints",
        ),
        ("/api/v1/training_runs?limit=20", "/api/v1/training_runs"),
        ("https://bucket.example/archive.tar", "<external>"),
    ],
)
def test_paths_lose_their_ids(path: str, want: str) -> None:
    assert normalize_path(path) == want


def emit_request(path: str, status: int, duration: float, retry: int = 0) -> None:
    meta = {"method": "POST", "path": path, "retry_count": retry, "session_id": "s"}
    events.emit("tinkjax.request.start", {"system_time": 0.0}, meta)
    events.emit("tinkjax.request.stop", {"duration_s": duration}, {**meta, "status": status})


def test_the_collector_turns_events_into_metrics() -> None:
    r = Registry()
    c = Collector(r, handler_id="test.collector")
    c.attach()
    c.attach()  # idempotent
    try:
        durations = [0.01 * (i + 1) for i in range(50)]
        for i, d in enumerate(durations):
            emit_request("/api/v1/forward_backward", 200 if i % 10 else 503, d, retry=i % 10 == 1)
        events.emit(
            "tinkjax.request.exception",
            {"duration_s": 1.0},
            {"method": "GET", "path": "/api/v1/x", "error_type": "APITimeoutError"},
        )
        events.emit("tinkjax.retry.attempt", {"attempt": 1}, {"name": "sampler"})
        events.emit("tinkjax.retry.failed", {}, {"name": "sampler", "reason": "max_retries"})
        events.emit("tinkjax.future.queue_state", {"waited_s": 2.0}, {"queue_state": "paused"})
        for m in ("m1", "m2"):
            events.emit(
                "tinkjax.regularizer.compute",
                {"value": 0.5, "contribution": 0.05, "grad_norm": 1.5},
                {"regularizer_name": "l1", "weight": 0.1, "model_id": m},
            )
            events.emit(
                "tinkjax.custom_loss.stop", {"duration": 0.2, "loss_total": 1.25}, {"model_id": m}
            )
        events.emit("tinkjax.custom_loss.exception", {"duration": 0.1}, {"model_id": "m3"})
    finally:
        c.detach()
    emit_request("/api/v1/forward_backward", 200, 9.0)  # detached: not counted
    s = r.snapshot()
    fb = {"method": "POST", "path": "/api/v1/forward_backward"}
    assert s.counter("tinkjax_requests_total", **fb) == 50
    assert s.counter("tinkjax_requests_total", status=503) == 5
    h = s.histogram("tinkjax_request_duration_seconds", **fb)
    assert h is not None
    assert h.count == 50
    assert h.p95 == pytest.approx(np.percentile(durations, 95))
    assert s.counter("tinkjax_request_errors_total", error_type="APITimeoutError") == 1
    assert s.counter("tinkjax_retries_total", source="transport") == 5
    assert s.counter("tinkjax_retries_total", source="sampler") == 1
    assert s.counter("tinkjax_retry_failures_total", reason="max_retries") == 1
    qw = s.histogram("tinkjax_queue_wait_seconds", queue_state="paused")
    assert qw is not None
    assert qw.max == 2.0
    assert s.gauge("tinkjax_regularizer_grad_norm", regularizer="l1") == 1.5
    assert s.counter("tinkjax_regularizer_steps_total", regularizer="l1") == 2
    assert s.counter("tinkjax_custom_loss_total", outcome="ok") == 2
    assert s.counter("tinkjax_custom_loss_total", outcome="error") == 1
    assert s.gauge("tinkjax_custom_loss_value") == 1.25


def filled_registry() -> Registry:
    r = Registry()
    rng = np.random.default_rng(3)
    for v in rng.exponential(0.05, size=300):
        r.observe("tinkjax_request_duration_seconds", v, method="POST", path="/api/v1/asample")
    r.increment("tinkjax_requests_total", 7, method="POST", path="/api/v1/asample", status=200)
    r.set_gauge("tinkjax_regularizer_value", 0.25, regularizer="kl")
    r.describe("tinkjax_requests_total", "answered requests")
    return r


def test_prometheus_exposition_parses_back_to_the_snapshot() -> None:
    from prometheus_client.parser import text_string_to_metric_families

    r = filled_registry()
    snap = r.snapshot()
    families = {f.name: f for f in text_string_to_metric_families(metrics.prometheus_text(r))}
    req = families["tinkjax_requests"]
    assert req.type == "counter"
    assert req.documentation == "answered requests"
    (sample,) = [s for s in req.samples if s.name == "tinkjax_requests_total"]
    assert sample.value == 7
    assert sample.labels["status"] == "200"
    assert families["tinkjax_regularizer_value"].samples[0].value == 0.25
    hist = families["tinkjax_request_duration_seconds"]
    assert hist.type == "summary"
    by = {(s.name, s.labels.get("quantile")): s.value for s in hist.samples}
    h = snap.histogram("tinkjax_request_duration_seconds", method="POST", path="/api/v1/asample")
    assert h is not None
    assert by[("tinkjax_request_duration_seconds", "0.5")] == pytest.approx(h.p50)
    assert by[("tinkjax_request_duration_seconds", "0.99")] == pytest.approx(h.p99)
    assert by[("tinkjax_request_duration_seconds_count", None)] == 300
    assert by[("tinkjax_request_duration_seconds_sum", None)] == pytest.approx(h.sum)


def test_opentelemetry_metrics_read_back_with_an_in_memory_reader() -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    r = filled_registry()
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    metrics.OpenTelemetryExporter(r, provider.get_meter("test"))
    data = reader.get_metrics_data()
    assert data is not None
    points: dict[str, list[Any]] = {}
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                points[m.name] = list(m.data.data_points)
    (req,) = points["tinkjax_requests_total"]
    assert req.value == 7
    assert dict(req.attributes)["path"] == "/api/v1/asample"
    h = r.snapshot().histogram(
        "tinkjax_request_duration_seconds", method="POST", path="/api/v1/asample"
    )
    assert h is not None
    quantiles = {
        dict(p.attributes)["quantile"]: p.value for p in points["tinkjax_request_duration_seconds"]
    }
    assert quantiles == pytest.approx({0.5: h.p50, 0.95: h.p95, 0.99: h.p99})
    (count,) = points["tinkjax_request_duration_seconds_count"]
    assert count.value == 300
    (gauge,) = points["tinkjax_regularizer_value"]
    assert gauge.value == 0.25
    provider.shutdown()


def test_the_default_registry_is_attached_on_import() -> None:
    assert metrics.COLLECTOR.attached
    before = metrics.snapshot().counter("tinkjax_requests_total", path="/api/v1/import-check")
    emit_request("/api/v1/import-check", 200, 0.001)
    after = metrics.snapshot().counter("tinkjax_requests_total", path="/api/v1/import-check")
    assert after == before + 1
