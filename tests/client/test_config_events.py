"""Configuration precedence and masking, the backoff utility, the event API, chunking maths,
and the public API surface."""

from __future__ import annotations

import logging
import random
from typing import Any

import numpy as np
import pytest

import tinkjax
from tinkjax import events
from tinkjax.client import (
    DEFAULT_BASE_URL,
    Backoff,
    ClientConfig,
    backoff_delay,
    chunk_data,
    combine_outputs,
    estimate_datum_bytes,
    mask_secrets,
    resolve_config,
    retry_after_seconds,
)
from tinkjax.client._config import EMBEDDED_PLACEHOLDER_URL
from tinkjax.errors import ConfigurationError
from tinkjax.types import Datum, ForwardBackwardOutput, ModelInput, TensorData

KEY = "tml-config-secret-abcdef"


def test_precedence_argument_env_default() -> None:
    env = {
        "TINKER_API_KEY": KEY,
        "TINKER_BASE_URL": "https://env.example/x/",
        "TINKER_PROJECT_ID": "proj-env",
        "TINKER_TAGS": "a, b,,c",
    }
    cfg = resolve_config(environ=env)
    assert cfg.base_url == "https://env.example/x"
    assert cfg.api_key == KEY
    assert cfg.project_id == "proj-env"
    assert cfg.tags == ("a", "b", "c")
    cfg = resolve_config(
        environ=env,
        base_url="https://arg.example",
        project_id="p",
        tags=["t"],
        api_key="tml-arg",
    )
    assert (cfg.base_url, cfg.project_id, cfg.tags, cfg.api_key) == (
        "https://arg.example",
        "p",
        ("t",),
        "tml-arg",
    )
    cfg = resolve_config(environ={"TINKER_API_KEY": KEY})
    assert cfg.base_url == DEFAULT_BASE_URL
    assert cfg.max_retries == 10
    assert not cfg.embedded


def test_embedded_default_and_explicit_local() -> None:
    assert resolve_config(environ={}).embedded
    assert resolve_config(environ={"TINKER_API_KEY": KEY}, base_url="local").embedded
    assert not resolve_config(environ={"TINKER_BASE_URL": "http://127.0.0.1:9"}).embedded


def test_resolving_an_embedded_config_starts_nothing() -> None:
    """The resolver only returns data: the embedded backend's URL is a placeholder until the
    caller starts it (``ServiceClient`` and ``RestClient`` do, through ``_embedded``)."""
    from tinkjax.client import _embedded

    started = _embedded._handle is not None
    cfg = resolve_config(environ={})
    assert cfg.base_url == EMBEDDED_PLACEHOLDER_URL
    assert (_embedded._handle is not None) == started
    remote = resolve_config(environ={"TINKER_API_KEY": KEY})
    assert _embedded.start_embedded(remote) is remote  # a remote config is left alone


def test_the_telemetry_environment_variable_is_not_a_config_field() -> None:
    """``TINKER_TELEMETRY`` was read into a flag nothing used; the flag is gone (a telemetry
    reporter will bring its own setting)."""
    assert "telemetry" not in ClientConfig.__struct_fields__
    with pytest.raises(TypeError):
        resolve_config(environ={}, telemetry=False)  # type: ignore[call-arg]


def test_key_format_checked_only_for_remote() -> None:
    with pytest.raises(ConfigurationError, match="tml-") as info:
        resolve_config(environ={}, api_key="sk-not-a-tinker-key", base_url="https://x.example")
    assert "sk-not-a-tinker-key" not in str(info.value)
    with pytest.raises(ConfigurationError, match="no API key"):
        resolve_config(environ={"TINKER_BASE_URL": "https://x.example"})
    cfg = resolve_config(environ={}, api_key="anything", base_url="http://localhost:8000")
    assert cfg.api_key == "anything"


def test_secrets_masked_in_repr_and_text(caplog: pytest.LogCaptureFixture) -> None:
    cfg = resolve_config(environ={}, api_key=KEY, base_url="https://x.example")
    assert KEY not in repr(cfg)
    assert KEY not in str(cfg)
    assert "tml-***" in repr(cfg)
    assert mask_secrets(f"header X-API-Key: {KEY}") == "header X-API-Key: ***"


def test_backoff_is_exponential_capped_jittered() -> None:
    rng = random.Random(0)
    for attempt in range(12):
        d = backoff_delay(attempt, base=0.5, cap=10.0, jitter=0.25, rng=rng)
        raw = min(0.5 * 2**attempt, 10.0)
        assert 0.75 * raw <= d <= raw
    b = Backoff(base=1.0, cap=4.0, jitter=0.0)
    assert [b.next() for _ in range(4)] == [1.0, 2.0, 4.0, 4.0]
    assert b.next(hint=0.2) == 0.2
    assert b.next(hint=120.0) == 4.0
    assert retry_after_seconds({"retry-after": "3"}) == 3.0
    assert retry_after_seconds({"retry-after-ms": "250"}) == 0.25
    assert retry_after_seconds({"retry-after": "999"}) is None
    assert retry_after_seconds({"retry-after": "soon"}) is None
    with pytest.raises(ValueError, match="attempt"):
        backoff_delay(-1)


def test_events_attach_detach_and_failing_handler(caplog: pytest.LogCaptureFixture) -> None:
    got: list[Any] = []
    events.attach("t1", "a.b", lambda n, m, md: got.append((n, m["x"], md)))
    events.attach("t2", [("a", "b"), "c.d"], lambda n, m, md: 1 / 0)
    with pytest.raises(ValueError, match="already attached"):
        events.attach("t1", "a.b", lambda *a: None)
    try:
        with caplog.at_level(logging.ERROR, logger="tinkjax.events"):
            events.emit(("a", "b"), {"x": 1}, {"k": "v"})
            events.emit("c.d", {"x": 2}, {})
        assert got == [(("a", "b"), 1, {"k": "v"})]
        assert "'t2' failed on a.b" in caplog.text
        assert "c.d" in caplog.text
        assert set(events.handlers()) >= {"t1", "t2"}
    finally:
        assert events.detach("t1")
        assert events.detach("t2")
    assert not events.detach("t1")
    events.emit("a.b", {"x": 3}, {})
    assert len(got) == 1
    with pytest.raises(ValueError, match="event name"):
        events.normalize_event_name("a..b")


def test_telemetry_metadata_nests() -> None:
    assert events.current_telemetry_metadata() == {}
    with events.telemetry_metadata(run="r1", step=1):
        with events.telemetry_metadata(step=2):
            assert events.current_telemetry_metadata() == {"run": "r1", "step": 2}
        assert events.current_telemetry_metadata() == {"run": "r1", "step": 1}
    assert events.current_telemetry_metadata() == {}


def _datum(n: int) -> Datum:
    return Datum(
        model_input=ModelInput.from_ints(list(range(n))),
        loss_fn_inputs={"target_tokens": list(range(n)), "weights": [1.0] * n},
    )


def test_chunking_limits() -> None:
    d = _datum(10)
    assert estimate_datum_bytes(d) == 4 * 10 + 8 * 10 + 4 * 10
    data = [_datum(10) for _ in range(7)]
    assert [len(c) for c in chunk_data(data, max_len=3)] == [3, 3, 1]
    assert [len(c) for c in chunk_data(data, max_bytes=2 * 160)] == [2, 2, 2, 1]
    assert [len(c) for c in chunk_data(data, max_bytes=10)] == [1] * 7  # oversize datums alone
    assert chunk_data([]) == []
    assert sum(len(c) for c in chunk_data([_datum(1)] * 2500)) == 2500
    assert [len(c) for c in chunk_data([_datum(1)] * 2500)] == [1024, 1024, 452]


def _out(n: int, metrics: dict[str, float]) -> ForwardBackwardOutput:
    outs = [{"logprobs": TensorData.from_numpy(np.zeros(1, np.float32))} for _ in range(n)]
    return ForwardBackwardOutput(
        loss_fn_output_type="ArrayRecord", loss_fn_outputs=outs, metrics=metrics
    )


def test_combine_metric_reductions() -> None:
    a = _out(
        1,
        {
            "l:sum": 1.0,
            "m:mean": 1.0,
            "lo:min": 3.0,
            "hi:max": 3.0,
            "s:slack": 1.0,
            "u:unique": 7.0,
            "h:hash2": 2.0**40,
            "x:weird": 1.0,
            "only_a:sum": 1.0,
        },
    )
    b = _out(
        3,
        {
            "l:sum": 2.0,
            "m:mean": 5.0,
            "lo:min": 1.0,
            "hi:max": 4.0,
            "s:slack": 5.0,
            "u:unique": 8.0,
            "h:hash2": 3.0,
            "x:weird": 1.0,
        },
    )
    c = combine_outputs([a, b])
    assert len(c.loss_fn_outputs) == 4
    assert c.metrics == {
        "l:sum": 3.0,
        "m:mean": pytest.approx((1 * 1 + 3 * 5) / 4),
        "lo:min": 1.0,
        "hi:max": 4.0,
        "s:slack": pytest.approx(5.0 - (1 * 1 + 3 * 5) / 4),
        "u:unique": 7.0,
        "u:unique_1": 8.0,
        "h:hash2": 2.0**40 + 3.0,
    }
    with pytest.raises(ValueError, match="name:reduction"):
        combine_outputs([_out(1, {"loss": 1.0})])
    assert combine_outputs([]).loss_fn_outputs == []
    single = combine_outputs([_out(2, {"l:sum": 1.0, "x:weird": 2.0})])
    assert single.metrics == {"l:sum": 1.0}  # unknown reductions dropped, as with many chunks


def test_official_reductions_agree() -> None:
    from tinker.lib.chunked_fwdbwd_helpers import _metrics_reduction

    rng = np.random.default_rng(0)
    outs = [
        _out(
            int(k),
            {
                "a:sum": float(v),
                "b:mean": float(w),
                "c:slack": float(v),
                "d:max": float(w),
                "e:unique": float(v),
            },
        )
        for k, v, w in zip(
            rng.integers(1, 9, 4), rng.normal(size=4), rng.normal(size=4), strict=True
        )
    ]

    class Fake:
        def __init__(self, o: ForwardBackwardOutput) -> None:
            self.metrics = o.metrics
            self.loss_fn_outputs = o.loss_fn_outputs

    ref = _metrics_reduction([Fake(o) for o in outs])  # type: ignore[arg-type]
    assert combine_outputs(outs).metrics == pytest.approx(ref)


def test_public_api_is_sorted_and_complete() -> None:
    assert tinkjax.__all__ == sorted(tinkjax.__all__)
    public = {n for n in dir(tinkjax) if not n.startswith("_")} - {
        "client",
        "codec",
        "errors",
        "models",
        "server",
        "engine",
        "losses",
        "regularizers",
        "kernels",
        "cli",
        "sweep",
        "metrics",
    }
    assert public <= set(tinkjax.__all__) | {"annotations"}
    for name in tinkjax.__all__:
        assert hasattr(tinkjax, name), name
    import tinkjax.client as client

    def isort_key(name: str) -> tuple[int, str]:  # ruff RUF022: CONSTANTS, Classes, functions
        return (0 if name.isupper() else 1 if name[:1].isupper() else 2, name)

    assert client.__all__ == sorted(client.__all__, key=isort_key)
    assert tinkjax.ServiceClient is client.ServiceClient
