"""Ready loops' pieces: learning-rate schedules against their formulas, regularizers from config."""

from __future__ import annotations

import math

import pytest

from tinkjax.sweep import DEFAULT_CONFIG, SweepConfigError, learning_rate, merged, regularizers_of


def _cfg(**opt: object) -> dict:
    return merged(DEFAULT_CONFIG, {"optimizer": opt})


def test_constant_schedule_with_warmup() -> None:
    cfg = _cfg(learning_rate=0.1, warmup_steps=4)
    got = [learning_rate(cfg, s, 10) for s in range(10)]
    assert got[:4] == pytest.approx([0.025, 0.05, 0.075, 0.1])
    assert got[4:] == pytest.approx([0.1] * 6)


def test_linear_and_cosine_decay_to_zero_at_the_end() -> None:
    lin = _cfg(learning_rate=1.0, schedule="linear")
    cos = _cfg(learning_rate=1.0, schedule="cosine", warmup_steps=2)
    assert [learning_rate(lin, s, 5) for s in range(5)] == pytest.approx([1, 0.8, 0.6, 0.4, 0.2])
    for s in range(2, 12):
        p = (s - 2) / 10
        assert learning_rate(cos, s, 12) == pytest.approx(0.5 * (1 + math.cos(math.pi * p)))


def test_bad_schedule_names_the_leaf() -> None:
    with pytest.raises(SweepConfigError, match=r"optimizer.schedule.*'exp'"):
        learning_rate(_cfg(schedule="exp"), 0, 10)


def test_regularizers_from_config_tables() -> None:
    cfg = merged(
        DEFAULT_CONFIG,
        {
            "regularizers": {
                "ent": {"kind": "entropy", "weight": 0.1},
                "l1": {"weight": 2.0, "center": -1.0},
            }
        },
    )
    regs = regularizers_of(cfg)
    assert [(r.name, r.weight) for r in regs] == [("ent", 0.1), ("l1", 2.0)]


@pytest.mark.parametrize(
    ("table", "match"),
    [
        ({"x": {"kind": "nope", "weight": 1.0}}, r"regularizers.x.kind: 'nope' is not a built-in"),
        ({"x": {"kind": "l1_value", "weight": 1.0}}, r"not a built-in"),
        ({"l1": {"weight": 1.0, "bogus": 3}}, r"regularizers.l1: .*bogus"),
    ],
)
def test_bad_regularizer_tables_are_refused(table: dict, match: str) -> None:
    with pytest.raises(SweepConfigError, match=match):
        regularizers_of(merged(DEFAULT_CONFIG, {"regularizers": table}))
