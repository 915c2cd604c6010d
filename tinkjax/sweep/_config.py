"""Run configurations: nested dicts of plain values, addressed by dotted leaf paths.

A run's config is TOML-shaped data (``{"optimizer": {"learning_rate": 1e-3}, ...}``); a sweep
varies leaves of it, named by dotted paths (``"optimizer.learning_rate"``,
``"regularizers.l1.weight"``). The configs of a sweep are its base config with, for every point
of the grid (the product of the listed values) and every entry of the explicit list, those
leaves replaced. Only leaves that exist in the base config can be varied: a misspelt path is an
error before anything runs, not a silently ignored key.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from tinkjax.sweep._errors import SweepConfigError

__all__ = [
    "DEFAULT_CONFIG",
    "RunSpec",
    "expand",
    "fingerprint",
    "flatten",
    "get_leaf",
    "merged",
]

#: What every run config holds unless the sweep's base config says otherwise: what the driver
#: reads to create a run (``base_model``, ``seed``, ``lora.rank``) and what the ready loops read.
DEFAULT_CONFIG: dict[str, Any] = {
    "base_model": "tinkjax/bytelm-micro",
    "seed": 0,
    "lora": {"rank": 8},
    "optimizer": {
        "learning_rate": 1e-3,
        "schedule": "constant",
        "warmup_steps": 0,
        "beta1": 0.9,
        "beta2": 0.95,
        "eps": 1e-8,
        "weight_decay": 0.0,
    },
    "loss": {"name": "cross_entropy", "config": {}},
    "regularizers": {},
    "track_grad_norms": True,
}

Config = dict[str, Any]


def merged(base: Mapping[str, Any], override: Mapping[str, Any]) -> Config:
    """``base`` with ``override`` merged in, recursively (a copy; neither is changed)."""
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}``: every leaf by its dotted path (empty tables kept
    out; lists are leaves)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{path}."))
        elif not isinstance(value, Mapping):
            out[path] = value
    return out


def get_leaf(config: Mapping[str, Any], path: str) -> Any:
    """The value at a dotted ``path``.

    Raises:
        SweepConfigError: no such leaf (names the path and the keys that exist there).
    """
    node: Any = config
    walked: list[str] = []
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            where = ".".join(walked) or "the config"
            have = sorted(node) if isinstance(node, Mapping) else []
            raise SweepConfigError(
                f"config leaf {path!r} does not exist: {where} has no key {part!r}"
                + (f" (it has {have})" if have else "")
            )
        node = node[part]
        walked.append(part)
    if isinstance(node, Mapping):
        raise SweepConfigError(f"config leaf {path!r} is a table, not a leaf; name one of its keys")
    return node


def _set_leaf(config: Config, path: str, value: Any) -> None:
    *parents, last = path.split(".")
    node = config
    for part in parents:
        node = node[part]
    node[last] = copy.deepcopy(value)


def _check_value(path: str, value: Any) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise SweepConfigError(f"config leaf {path!r}: value {value!r} is not finite")


class RunSpec:
    """One run of a sweep: its id, its full config and the leaves that differ from the base.

    Attributes:
        run_id: ``run-NNN-<hash>``: the index in the sweep and a hash of the config, so a run
            keeps its id (and its results and checkpoints) when the sweep is run again.
        config: the whole run config.
        overrides: the varied leaves, by dotted path (the table's config columns).
    """

    __slots__ = ("config", "overrides", "run_id")

    def __init__(self, index: int, config: Config, overrides: Mapping[str, Any]) -> None:
        self.config = config
        self.overrides = dict(overrides)
        self.run_id = f"run-{index:03d}-{_digest(config)[:8]}"

    def __repr__(self) -> str:
        return f"RunSpec({self.run_id!r}, {self.overrides})"


def expand(
    base: Mapping[str, Any] | None,
    grid: Mapping[str, Sequence[Any]] | None = None,
    runs: Sequence[Mapping[str, Any]] | None = None,
) -> list[RunSpec]:
    """The runs of a sweep: the grid's product, then the explicit list, over ``base``.

    ``base`` is merged over :data:`DEFAULT_CONFIG`. ``grid`` maps dotted leaf paths to the
    values to try (every combination is a run); each entry of ``runs`` maps dotted paths (or
    nested tables) to values for one run. Neither given: the base config is the one run.

    Raises:
        SweepConfigError: a path names no leaf of the base config, a grid entry has no values
            (a grid with no runs), a value is not finite, or two runs have the same config.
    """
    config = merged(DEFAULT_CONFIG, base or {})
    points: list[dict[str, Any]] = []
    if grid:
        for path, values in grid.items():
            get_leaf(config, path)
            if isinstance(values, str | bytes) or not isinstance(values, Sequence):
                raise SweepConfigError(
                    f"grid[{path!r}]: expected a list of values, got {values!r:.80}"
                )
            if not values:
                raise SweepConfigError(f"grid[{path!r}] lists no values: the grid has no runs")
            for value in values:
                _check_value(path, value)
        keys = list(grid)
        points.extend(
            dict(zip(keys, combo, strict=True))
            for combo in itertools.product(*(grid[k] for k in keys))
        )
    for i, entry in enumerate(runs or ()):
        if not isinstance(entry, Mapping):
            raise SweepConfigError(f"runs[{i}]: expected a table of leaf values, got {entry!r:.80}")
        flat = {**{k: v for k, v in entry.items() if not isinstance(v, Mapping)}}
        flat.update(flatten({k: v for k, v in entry.items() if isinstance(v, Mapping)}))
        for path, value in flat.items():
            try:
                get_leaf(config, path)
            except SweepConfigError as exc:
                raise SweepConfigError(f"runs[{i}]: {exc}") from None
            _check_value(path, value)
        points.append(flat)
    if not points:
        points.append({})
    specs: list[RunSpec] = []
    seen: dict[str, int] = {}
    for index, point in enumerate(points):
        run_config = copy.deepcopy(config)
        for path, value in point.items():
            _set_leaf(run_config, path, value)
        digest = _digest(run_config)
        if digest in seen:
            raise SweepConfigError(
                f"runs {seen[digest]} and {index} have the same config {point}: each run must differ"
            )
        seen[digest] = index
        specs.append(RunSpec(index, run_config, point))
    return specs


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False, default=str)


def _digest(obj: Any) -> str:
    return hashlib.sha256(_canonical(obj).encode()).hexdigest()


def fingerprint(specs: Sequence[RunSpec], settings: Mapping[str, Any]) -> str:
    """What identifies a sweep in its directory: every run's id and config plus the settings
    that change results (steps, loop, checkpoint schedule)."""
    return _digest({"runs": [[s.run_id, s.config] for s in specs], "settings": dict(settings)})
