"""Fault injection: status codes with Retry-After, latency, dropped connections, counts."""

from __future__ import annotations

import httpx
import pytest

from tinkjax.server import FaultConfig, FaultRule, ServerHandle, start

from .conftest import KEY_HEADERS, MICRO


@pytest.fixture
def faulty() -> ServerHandle:
    with start(long_poll_s=1.0) as handle:
        yield handle


def test_fault_rule_fires_times_then_stops(faulty: ServerHandle) -> None:
    faulty.faults.rules.append(
        FaultRule(path=r"/healthz$", status=503, retry_after=0.5, times=2, methods=["GET"])
    )
    with httpx.Client(base_url=faulty.base_url, headers=KEY_HEADERS) as http:
        first = http.get("/api/v1/healthz")
        assert first.status_code == 503
        assert first.headers["retry-after"] == "0.5"
        assert "injected fault" in first.json()["detail"]
        assert http.get("/api/v1/healthz").status_code == 503
        assert http.get("/api/v1/healthz").status_code == 200
        # methods filter: a POST to a matching path is not affected
        faulty.faults.rules.append(FaultRule(path=r"/client/config$", status=429, methods=["GET"]))
        assert http.post("/api/v1/client/config", json={"sdk_version": "x"}).status_code == 200
    assert faulty.faults.rules[0].fired == 2


def test_fault_drop_closes_connection(faulty: ServerHandle) -> None:
    faulty.faults.rules.append(FaultRule(path=r"/healthz$", drop=True, times=1))
    with httpx.Client(base_url=faulty.base_url, headers=KEY_HEADERS) as http:
        with pytest.raises(httpx.TransportError):
            http.get("/api/v1/healthz")
        assert http.get("/api/v1/healthz").json() == {"status": "ok"}


def test_fault_delay_then_normal_answer(faulty: ServerHandle) -> None:
    faulty.faults.rules.append(FaultRule(path=r"/healthz$", delay_s=0.2, times=1))
    with httpx.Client(base_url=faulty.base_url, headers=KEY_HEADERS) as http:
        assert http.get("/api/v1/healthz").json() == {"status": "ok"}
    assert faulty.faults.rules[0].fired == 1


def test_sdk_survives_transient_faults(
    faulty: ServerHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    tinker = pytest.importorskip("tinker")
    monkeypatch.setenv("TINKER_BASE_URL", faulty.base_url)
    monkeypatch.setenv("TINKER_API_KEY", "tml-test")
    monkeypatch.setenv("TINKER_TELEMETRY", "0")
    faulty.faults.rules.extend([
        FaultRule(path=r"/optim_step$", status=500, times=1),
        FaultRule(path=r"/retrieve_future$", status=503, retry_after=0.05, times=2),
        FaultRule(path=r"/get_info$", drop=True, times=1),
    ])  # fmt: skip
    with tinker.ServiceClient() as service:
        tc = service.create_lora_training_client(base_model=MICRO, rank=2).result()
        datum = tinker.types.Datum(
            model_input=tinker.types.ModelInput.from_ints([1, 2, 3]),
            loss_fn_inputs={"target_tokens": [2, 3, 4], "weights": [1.0, 1.0, 1.0]},
        )
        tc.forward_backward([datum], "cross_entropy").result()
        metrics = tc.optim_step(tinker.types.AdamParams(learning_rate=1e-3)).result().metrics
    assert metrics["step:max"] == 1.0  # the retried optim step ran exactly once
    assert [r.fired for r in faulty.faults.rules] == [1, 2, 1]


def test_fault_config_validation() -> None:
    with pytest.raises(ValueError, match="status"):
        FaultRule(path="x", status=42)
    cfg = FaultConfig(rules=[FaultRule(path="a", status=500)])
    cfg.clear()
    assert cfg.rules == []


KEY = {"X-API-Key": "tml-fault-tests"}


def test_fault_hang_malformed_body_and_headers(faulty: ServerHandle) -> None:
    faulty.faults.rules.extend(
        [
            FaultRule(path=r"/healthz$", hang=True, times=1),
            FaultRule(path=r"/healthz$", malformed=True, times=1),
            FaultRule(
                path=r"/healthz$", status=418, body=b'{"detail": "teapot"}',
                headers={"x-should-retry": "false"}, times=1,
            ),
        ]
    )  # fmt: skip
    with httpx.Client(base_url=faulty.base_url, timeout=0.5) as http:
        with pytest.raises(httpx.ReadTimeout):
            http.get("/api/v1/healthz")
        broken = http.get("/api/v1/healthz")
        assert broken.status_code == 200
        with pytest.raises(ValueError, match="Expecting value"):
            broken.json()
        teapot = http.get("/api/v1/healthz")
        assert (teapot.status_code, teapot.json()) == (418, {"detail": "teapot"})
        assert teapot.headers["x-should-retry"] == "false"
        assert http.get("/api/v1/healthz").json() == {"status": "ok"}


def test_fault_after_applies_the_request_then_fails(faulty: ServerHandle) -> None:
    faulty.faults.rules.append(FaultRule(path=r"/create_session$", status=502, after=True, times=1))
    body = {"tags": ["after"], "user_metadata": {}, "sdk_version": "t", "type": "create_session"}
    with httpx.Client(base_url=faulty.base_url, headers=KEY) as http:
        assert http.post("/api/v1/create_session", json=body).status_code == 502
        ok = http.post("/api/v1/create_session", json=body)
        assert ok.status_code == 200
        listed = http.get("/api/v1/sessions").json()["sessions"]
        assert len(listed) == 2  # the failed answer's session exists: it was applied


def test_fault_rules_can_target_one_api_key(faulty: ServerHandle) -> None:
    faulty.faults.rules.append(FaultRule(path=r"/healthz$", status=503, api_key="tml-a"))
    with httpx.Client(base_url=faulty.base_url) as http:
        assert http.get("/api/v1/healthz", headers={"X-API-Key": "tml-a"}).status_code == 503
        assert http.get("/api/v1/healthz", headers={"X-API-Key": "tml-b"}).status_code == 200


def test_exclusive_and_incomplete_rules_are_refused() -> None:
    with pytest.raises(ValueError, match="exclusive"):
        FaultRule(path="x", drop=True, hang=True)
    with pytest.raises(ValueError, match="after: needs the status"):
        FaultRule(path="x", after=True)
