"""The recorded-sequence store: per-session scope, the one-day lifetime restarted by use, the
memory bounds (least recently used evicted), and errors that say why an id is gone."""

from __future__ import annotations

import numpy as np
import pytest

from tinkjax.server._errors import ApiError
from tinkjax.server._sequences import SEQUENCE_TTL_S, SequenceRecords, session_of_sampler
from tinkjax.types import Datum, ModelInput, PromptProvenanceSpan, SampledProvenanceSpan


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _records(**kw: float) -> tuple[SequenceRecords, Clock]:
    clock = Clock()
    return SequenceRecords(clock=clock, **kw), clock  # type: ignore[arg-type]


def _seq(seq_id: str, n: int = 3) -> tuple[str, np.ndarray, np.ndarray]:
    return seq_id, np.arange(n) + 10, -np.linspace(0.5, 1.5, n)


def _error(records: SequenceRecords, session: str, seq_id: str) -> str:
    with pytest.raises(ApiError) as info:
        records.get(session, seq_id, "f")
    assert info.value.status == 400
    return str(info.value)


def test_lifetime_is_one_day_after_last_use() -> None:
    assert SEQUENCE_TTL_S == 86400.0
    records, clock = _records()
    records.record("s", [1, 2], [_seq("a"), _seq("b")])
    clock.now = 86000.0
    records.touch("s", ["a"])  # a training request used it: its day restarts
    clock.now = 86401.0
    assert records.get("s", "a", "f").tokens.tolist() == [10, 11, 12]
    assert "expired" in _error(records, "s", "b")
    clock.now = 86000.0 + 86401.0
    assert "expired" in _error(records, "s", "a")
    assert len(records) == 0
    assert records.tokens_held() == 0


def test_sessions_are_separate_and_ended_sessions_dropped() -> None:
    records, _ = _records()
    records.record("s1", [1], [_seq("x")])
    assert "unknown in this session" in _error(records, "s2", "x")
    assert records.forget_session("s1") == 1
    assert "session that has ended" in _error(records, "s1", "x")
    assert "unknown" in _error(records, "s1", "never")


def test_memory_bounds_evict_least_recently_used() -> None:
    records, _ = _records(max_session_tokens=12, max_total_tokens=20)
    records.record("s1", [1, 2, 3], [_seq("a"), _seq("b")])  # 6 tokens each
    records.touch("s1", ["a"])  # b is now the least recently used
    records.record("s1", [1, 2, 3], [_seq("c")])
    assert "evicted" in _error(records, "s1", "b")
    assert records.tokens_held("s1") == 12
    records.record("s2", [1, 2, 3], [_seq("d")])
    records.record("s2", [1, 2, 3], [_seq("e")])  # over the global bound: s1's oldest goes
    assert records.tokens_held() <= 20
    assert "evicted" in _error(records, "s1", "a")
    records.record("s2", list(range(30)), [_seq("huge")])
    assert "longer than the recording bound" in _error(records, "s2", "huge")


def test_fill_checks_spans_and_fills_from_the_record() -> None:
    records, clock = _records()
    records.record("s", [5, 6, 7], [_seq("a")])  # sampled 10, 11, 12
    datum = Datum(
        model_input=ModelInput.from_ints([5, 6, 7, 10, 11]),
        loss_fn_inputs={"target_tokens": [0, 0, 10, 11, 12], "advantages": [0, 0, 1, 1, 1.0]},
    ).with_provenance(
        [
            PromptProvenanceSpan(sequence_id="a", offset=0, length=3),
            SampledProvenanceSpan(sequence_id="a", offset=0, length=2),
        ],
        [
            PromptProvenanceSpan(sequence_id="a", offset=1, length=2),
            SampledProvenanceSpan(sequence_id="a", offset=0, length=3),
        ],
    )
    (out,) = records.fill("s", [datum], ("logprobs", "sampled_mask"))
    np.testing.assert_allclose(
        out.loss_fn_inputs["logprobs"].to_numpy(), [0, 0, -0.5, -1.0, -1.5], rtol=1e-6
    )
    assert out.loss_fn_inputs["sampled_mask"].to_numpy().tolist() == [0, 0, 1, 1, 1]
    clock.now = SEQUENCE_TTL_S - 1
    records.fill("s", [datum], ("logprobs", "sampled_mask"))  # restarts the day
    clock.now = SEQUENCE_TTL_S + 10
    assert records.get("s", "a", "f")
    with pytest.raises(ApiError, match=r"model_id: the model has no session"):
        records.fill(None, [datum], ("logprobs",))
    wrong_prompt = Datum(
        model_input=ModelInput.from_ints([5, 9, 7, 10, 11]),
        loss_fn_inputs=datum.loss_fn_inputs,
        model_input_spans=datum.model_input_spans,
        loss_fn_input_spans=datum.loss_fn_input_spans,
    )
    with pytest.raises(ApiError, match=r"data\[0\]\.model_input_spans\[0\]: token 9 at position 1"):
        records.fill("s", [wrong_prompt], ("logprobs",))


def test_session_of_sampler() -> None:
    assert session_of_sampler("sess-1:sample:3") == "sess-1"
    assert session_of_sampler("") is None
    assert session_of_sampler("tinkjax/bytelm-micro") is None
