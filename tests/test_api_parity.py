"""The official ``tinker`` SDK's public API, listed programmatically, against tinkjax's.

For the clients (``ServiceClient``, ``TrainingClient``, ``SamplingClient``, ``RestClient``), the
futures (``APIFuture``) and every public name of ``tinker.types``, the test fails on a name
tinkjax lacks, a parameter it does not accept where the official SDK does (same name, same
position when positional, optional where the official one is optional), a required parameter
the official SDK does not have, a field of a type, or a public method of a type, unless
``docs/compat.md`` excludes it with a reason in its exclusion table.

Names being built on other branches right now are in :data:`PENDING_ON_OTHER_BRANCHES`, with
the branch; the lead empties it at merge, and a pending name that exists already fails the
test so the set cannot go stale.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Any

import pytest

import tinkjax.client
import tinkjax.types

tinker = pytest.importorskip("tinker")

DOC = Path(__file__).resolve().parents[1] / "docs" / "compat.md"

#: name → branch that adds it. Emptied by the lead when the branch is merged.
PENDING_ON_OTHER_BRANCHES: dict[str, str] = {}

CLIENTS = [
    (tinker.ServiceClient, tinkjax.client.ServiceClient),
    (tinker.TrainingClient, tinkjax.client.TrainingClient),
    (tinker.SamplingClient, tinkjax.client.SamplingClient),
    (tinker.RestClient, tinkjax.client.RestClient),
    (tinker.APIFuture, tinkjax.client.APIFuture),
]


def excluded() -> dict[str, str]:
    """``docs/compat.md``'s exclusion table: ``| `name` | reason |`` rows under its heading."""
    text = DOC.read_text()
    section = text.split("## Not in tinkjax", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\|\s*`([^`]+)`\s*\|\s*(.*?)\s*\|\s*$", section, flags=re.M)
    return {name: reason for name, reason in rows}


def _params(fn: Any) -> list[inspect.Parameter]:
    params = list(inspect.signature(fn).parameters.values())
    if params and params[0].name in ("self", "cls"):
        params = params[1:]
    return params


def _signature_gaps(name: str, official: Any, ours: Any) -> list[str]:
    try:
        theirs, mine = _params(official), _params(ours)
    except (TypeError, ValueError):
        return []
    by_name = {p.name: p for p in mine}
    var_kw = any(p.kind is p.VAR_KEYWORD for p in mine)
    gaps = []
    positional = [p for p in theirs if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    mine_positional = [p for p in mine if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    for i, p in enumerate(positional):
        if i >= len(mine_positional) or mine_positional[i].name != p.name:
            gaps.append(f"{name}: positional parameter {i} is {p.name!r} in the official SDK")
    for p in theirs:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        q = by_name.get(p.name)
        if q is None:
            if not var_kw or p.kind is p.POSITIONAL_ONLY:
                gaps.append(f"{name}: no parameter {p.name!r}")
            continue
        if p.default is not p.empty and q.default is q.empty:
            gaps.append(f"{name}: {p.name!r} is optional in the official SDK, required here")
    official_names = {p.name for p in theirs}
    for q in mine:
        required = q.default is q.empty and q.kind not in (q.VAR_POSITIONAL, q.VAR_KEYWORD)
        if required and q.name not in official_names:
            gaps.append(f"{name}: requires {q.name!r}, which the official SDK does not have")
    return gaps


def _public_members(cls: type) -> dict[str, Any]:
    return {n: m for n, m in inspect.getmembers(cls) if not n.startswith("_")}


def client_gaps() -> dict[str, list[str]]:
    gaps: dict[str, list[str]] = {}
    for official, ours in CLIENTS:
        for member, obj in _public_members(official).items():
            key = f"{official.__name__}.{member}"
            if not hasattr(ours, member):
                gaps[key] = [f"{key}: missing"]
            elif callable(obj):
                found = _signature_gaps(key, obj, getattr(ours, member))
                if found:
                    gaps[key] = found
    return gaps


def _official_type_names() -> list[str]:
    return sorted(
        n
        for n, v in vars(tinker.types).items()
        if not n.startswith("_") and not inspect.ismodule(v) and n != "annotations"
    )


def _tag_field(cls: Any) -> str | None:
    config = getattr(cls, "__struct_config__", None)
    return None if config is None or config.tag is None else config.tag_field


def type_gaps() -> dict[str, list[str]]:
    gaps: dict[str, list[str]] = {}
    for name in _official_type_names():
        official = getattr(tinker.types, name)
        key = f"types.{name}"
        if not hasattr(tinkjax.types, name):
            gaps[key] = [f"{key}: missing"]
            continue
        ours = getattr(tinkjax.types, name)
        if not (inspect.isclass(official) and hasattr(official, "model_fields")):
            continue
        fields = set(getattr(ours, "__struct_fields__", ())) | {
            p.name for p in _params(ours) if inspect.isclass(ours)
        }
        tag = _tag_field(ours)
        for field in official.model_fields:
            if field not in fields and field != tag:
                gaps[f"{key}.{field}"] = [f"{key}: no field {field!r}"]
        base = set(dir(official.__mro__[-3])) if len(official.__mro__) >= 3 else set()
        for member, obj in vars(official).items():
            if member.startswith("_") or member in official.model_fields or member in base:
                continue
            if not (callable(obj) or isinstance(obj, classmethod | staticmethod | property)):
                continue
            if not hasattr(ours, member):
                gaps[f"{key}.{member}"] = [f"{key}: no method {member!r}"]
    return gaps


def test_the_exclusion_table_parses_and_gives_reasons() -> None:
    table = excluded()
    assert len(table) > 5
    for name, reason in table.items():
        assert len(reason.split()) >= 3, f"{name}: the exclusion needs a reason"


@pytest.mark.parametrize("kind", ["clients", "types"])
def test_tinkjax_has_the_official_public_api(kind: str) -> None:
    gaps = client_gaps() if kind == "clients" else type_gaps()
    allowed = excluded().keys() | PENDING_ON_OTHER_BRANCHES.keys()

    def covered(key: str) -> bool:
        # "types.Name" in the table covers its fields; "RestClient.x" covers only itself.
        return key in allowed or any(
            key.startswith(a + ".") for a in allowed if a.startswith("types.")
        )

    missing = [line for key, lines in sorted(gaps.items()) if not covered(key) for line in lines]
    assert not missing, "not in tinkjax and not excluded in docs/compat.md:\n" + "\n".join(missing)


def test_exclusions_and_pending_names_are_still_missing() -> None:
    """An entry for a name that tinkjax now has is stale: remove it."""
    gaps = client_gaps() | type_gaps()
    stale = [
        name
        for name in [*excluded(), *PENDING_ON_OTHER_BRANCHES]
        if name not in gaps and not any(g.startswith(name + ".") for g in gaps)
    ]
    assert not stale, f"these names are no longer missing; drop them from the lists: {stale}"
