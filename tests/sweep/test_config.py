"""Run configs: grid and list expansion over existing leaves, refusals that name the leaf."""

from __future__ import annotations

import math

import pytest

from tinkjax.sweep import DEFAULT_CONFIG, SweepConfigError, expand, flatten, get_leaf, merged


def test_grid_is_the_product_of_its_values_over_the_base() -> None:
    specs = expand(
        {"regularizers": {"l1": {"weight": 0.5}}},
        {"optimizer.learning_rate": [1e-3, 3e-3], "regularizers.l1.weight": [0.0, 0.1, 1.0]},
    )
    assert len(specs) == 6
    seen = {
        (s.config["optimizer"]["learning_rate"], s.config["regularizers"]["l1"]["weight"])
        for s in specs
    }
    assert seen == {(lr, w) for lr in (1e-3, 3e-3) for w in (0.0, 0.1, 1.0)}
    # every other leaf is the base's (merged over the defaults)
    for s in specs:
        assert s.config["lora"]["rank"] == DEFAULT_CONFIG["lora"]["rank"]
        assert set(s.overrides) == {"optimizer.learning_rate", "regularizers.l1.weight"}
    assert len({s.run_id for s in specs}) == 6


def test_explicit_runs_follow_the_grid_and_accept_nested_tables() -> None:
    specs = expand(
        {},
        {"seed": [0, 1]},
        [{"lora.rank": 4}, {"optimizer": {"learning_rate": 0.5}, "seed": 7}],
    )
    assert [s.overrides for s in specs] == [
        {"seed": 0},
        {"seed": 1},
        {"lora.rank": 4},
        {"seed": 7, "optimizer.learning_rate": 0.5},
    ]
    assert specs[3].config["optimizer"]["learning_rate"] == 0.5
    assert specs[3].config["optimizer"]["beta1"] == DEFAULT_CONFIG["optimizer"]["beta1"]


def test_no_grid_and_no_list_is_one_run_of_the_base() -> None:
    (only,) = expand({"seed": 3})
    assert only.config["seed"] == 3
    assert only.overrides == {}


def test_run_ids_are_stable_and_depend_on_the_config() -> None:
    a = expand({}, {"seed": [0, 1]})
    b = expand({}, {"seed": [0, 1]})
    c = expand({}, {"seed": [0, 2]})
    assert [s.run_id for s in a] == [s.run_id for s in b]
    assert a[1].run_id != c[1].run_id


@pytest.mark.parametrize(
    ("grid", "runs", "match"),
    [
        (
            {"optimizer.learnig_rate": [1.0]},
            None,
            r"'optimizer.learnig_rate'.*no key 'learnig_rate'",
        ),
        ({"nope": [1]}, None, r"'nope' does not exist"),
        ({"optimizer": [1]}, None, r"'optimizer' is a table"),
        ({"seed": []}, None, r"grid\['seed'\] lists no values: the grid has no runs"),
        ({"seed": 3}, None, r"grid\['seed'\]: expected a list"),
        ({"optimizer.learning_rate": [math.nan]}, None, r"not finite"),
        (None, [{"lora.rnk": 4}], r"runs\[0\]: config leaf 'lora.rnk'"),
        ({"seed": [0]}, [{"seed": 0}], r"same config"),
    ],
)
def test_bad_sweeps_are_refused_naming_the_leaf(grid, runs, match) -> None:
    with pytest.raises(SweepConfigError, match=match):
        expand({}, grid, runs)


def test_merge_flatten_and_get_leaf() -> None:
    base = {"a": {"b": 1, "c": {"d": 2}}, "e": [1, 2]}
    out = merged(base, {"a": {"c": {"d": 5}}})
    assert out == {"a": {"b": 1, "c": {"d": 5}}, "e": [1, 2]}
    assert base["a"]["c"]["d"] == 2  # not changed
    assert flatten(out) == {"a.b": 1, "a.c.d": 5, "e": [1, 2]}
    assert get_leaf(out, "a.c.d") == 5
