"""``/create_custom_loss`` and ``forward_backward(..., "custom")`` over raw JSON (no torch).

Graphs are written here as the official SDK encodes torch.fx graphs (``encode_graph``), so
the evaluator, the refusals and the one-pass training are covered by CI's default run; the
torch-traced losses of the SDK itself are in ``test_custom_graphs_sdk.py``.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import httpx
import numpy as np
import pytest

from tinkjax.losses import MAX_CONSTANTS, MAX_NODES
from tinkjax.server import ServerHandle

from .conftest import MICRO, ce_datum, fwdbwd_body, new_model, new_session, post, result

TOKENS = list(b"graphs are data, never code. ")


def _ref(name: str) -> dict[str, str]:
    return {"ref": name}


def _node(op: str, name: str, target: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
    return {"op": op, "name": name, "target": target, "args": list(args), "kwargs": kwargs}


def _weighted_nll() -> list[dict[str, Any]]:
    """``loss = -(logprobs * weights).sum() / logprobs.shape[0] * n`` with metrics — shape
    arithmetic, a method, operators, and a ``:mean`` metric."""
    return [
        _node("placeholder", "logprobs", "logprobs"),
        _node("placeholder", "weights", "weights"),
        _node("call_function", "mul", "operator.mul", _ref("logprobs"), _ref("weights")),
        _node("call_method", "sum_1", "sum", _ref("mul")),
        _node("call_function", "neg", "operator.neg", _ref("sum_1")),
        _node("call_function", "getattr_1", "getattr", _ref("logprobs"), "shape"),
        _node("call_function", "getitem", "operator.getitem", _ref("getattr_1"), 0),
        _node("call_function", "gt", "operator.gt", _ref("weights"), 0),
        _node("call_method", "float_1", "float", _ref("gt")),
        _node("call_method", "mean", "mean", _ref("float_1")),
        _node("call_function", "truediv", "operator.truediv", _ref("neg"), _ref("getitem")),
        _node(
            "output", "output", "output",
            {"tuple": [_ref("neg"), {"dict": {
                "custom/nll:sum": _ref("neg"),
                "custom/per_token:sum": _ref("truediv"),
                "custom/active:mean": _ref("mean"),
            }}]},
        ),
    ]  # fmt: skip


INPUTS = [{"name": "logprobs", "rank": 1}, {"name": "weights", "rank": 1}]


def _body(session_id: str, seq: int, nodes: list[Any], inputs: Any = None, **extra: Any) -> Any:
    return {
        "session_id": session_id, "custom_loss_seq_id": seq, "name": "weighted_nll",
        "inputs": INPUTS if inputs is None else inputs,
        "graph": {"format": 1, "nodes": nodes}, "type": "create_custom_loss", **extra,
    }  # fmt: skip


def _create(http: httpx.Client, body: Any) -> str:
    r = post(http, "create_custom_loss", body)
    assert r.status_code == 200, r.text
    done = result(http, r.json()["request_id"])
    assert done.status_code == 200, done.text
    return str(done.json()["loss_id"])


@pytest.fixture(scope="module")
def session(http: httpx.Client) -> str:
    return new_session(http)


def _datums(weights: list[list[float]]) -> list[dict[str, Any]]:
    out = []
    for start, w in zip((0, 5), weights, strict=True):
        datum = ce_datum(TOKENS[start : start + len(w) + 1])
        datum["loss_fn_inputs"]["weights"]["data"] = w
        out.append(datum)
    return out


def _grads(server: ServerHandle, model_id: str) -> dict[str, np.ndarray]:
    return server.backend.models.runtime(MICRO).accumulated_gradients(model_id)


def test_server_says_custom_losses_run_server_side(http: httpx.Client) -> None:
    r = post(http, "client/config", {"sdk_version": "0.38.0"})
    assert r.json()["custom_loss_server_side"] is True


def test_custom_loss_gives_the_builtin_update_in_one_pass(
    http: httpx.Client, server: ServerHandle, session: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    loss_id = _create(http, _body(session, 0, _weighted_nll()))
    rng = np.random.default_rng(0)
    weights = [rng.uniform(0, 1, 17).round(3).tolist(), [0.0, *rng.uniform(0, 1, 9).round(3)]]
    data = _datums(weights)
    custom, builtin = (new_model(http, session, seq=s, rank=4, seed=5) for s in (0, 1))
    runtime = server.backend.models.runtime(MICRO)
    calls: list[bool] = []
    original = runtime.forward_backward

    def spy(items: Any, *, forward_only: bool) -> Any:
        calls.append(forward_only)
        return original(items, forward_only=forward_only)

    monkeypatch.setattr(runtime, "forward_backward", spy)
    body = fwdbwd_body(custom, 1, data, loss_fn="custom", config={"loss_id": loss_id})
    r = post(http, "forward_backward", body)
    assert r.status_code == 200, r.text
    out = result(http, r.json()["request_id"]).json()
    assert calls == [False]  # one fused pass: no forward-only call
    ref = result(http, post(http, "forward_backward", fwdbwd_body(builtin, 1, data)).json()[
        "request_id"]).json()  # fmt: skip
    got, want = _grads(server, custom), _grads(server, builtin)
    assert any(np.abs(v).max() > 0 for v in got.values())
    for key in want:  # float32 both ways; the loss's gradient is the same expression
        np.testing.assert_allclose(got[key], want[key], rtol=2e-4, atol=2e-6, err_msg=key)
    metrics = out["metrics"]
    assert metrics["loss:sum"] == pytest.approx(ref["metrics"]["loss:sum"], rel=1e-5)
    assert metrics["custom/nll:sum"] == pytest.approx(metrics["loss:sum"], rel=1e-5)
    lps = [np.asarray(o["logprobs"]["data"]) for o in out["loss_fn_outputs"]]
    per_token = sum(
        -(lp * np.asarray(w)).sum() / len(w) for lp, w in zip(lps, weights, strict=True)
    )
    assert metrics["custom/per_token:sum"] == pytest.approx(per_token, rel=1e-4)
    active = np.mean([np.mean(np.asarray(w) > 0) for w in weights])
    assert metrics["custom/active:mean"] == pytest.approx(active, rel=1e-6)


def test_retried_upload_returns_the_same_loss(http: httpx.Client, session: str) -> None:
    first = _create(http, _body(session, 7, _weighted_nll()))
    assert _create(http, _body(session, 7, _weighted_nll())) == first
    other = _weighted_nll()
    other[3] = _node("call_method", "sum_1", "mean", _ref("mul"))
    r = post(http, "create_custom_loss", _body(session, 7, other))
    assert r.status_code == 400
    assert "custom_loss_seq_id" in r.json()["detail"]


def _replace(index: int, node: dict[str, Any]) -> list[dict[str, Any]]:
    nodes = _weighted_nll()
    nodes[index] = node
    return nodes


def _many_nodes() -> list[dict[str, Any]]:
    nodes = _weighted_nll()
    extra = [_node("call_function", f"n{i}", "operator.neg", _ref("neg")) for i in range(MAX_NODES)]
    return nodes[:-1] + extra + nodes[-1:]


HOSTILE: dict[str, tuple[list[dict[str, Any]], str]] = {
    "unknown function": (_replace(2, _node("call_function", "mul", "os.system", "ls")), "'mul'"),
    "builtins.eval": (
        _replace(2, _node("call_function", "mul", "builtins.eval", "1+1")),
        "builtins.eval",
    ),
    "torch.load": (_replace(2, _node("call_function", "mul", "torch.load", "/etc/passwd")), "mul"),
    "unknown method": (
        _replace(3, _node("call_method", "sum_1", "backward", _ref("mul"))),
        "sum_1",
    ),
    "dunder attribute": (
        _replace(
            5,
            _node("call_function", "getattr_1", "builtins.getattr", _ref("logprobs"), "__class__"),
        ),
        "getattr_1",
    ),
    "get_attr": (_replace(2, _node("get_attr", "mul", "_tensor_constant0")), "get_attr"),
    "call_module": (_replace(2, _node("call_module", "mul", "linear", _ref("logprobs"))), "mul"),
    "undefined reference": (
        _replace(2, _node("call_function", "mul", "operator.mul", _ref("nowhere"), 2)),
        "nowhere",
    ),
    "cycle (a later node)": (
        _replace(2, _node("call_function", "mul", "operator.mul", _ref("neg"), 2)),
        "'mul'",
    ),
    "self reference": (
        _replace(2, _node("call_function", "mul", "operator.mul", _ref("mul"), 2)),
        "'mul'",
    ),
    "duplicate name": (_replace(3, _node("call_method", "mul", "sum", _ref("mul"))), "'mul'"),
    "too many nodes": (_many_nodes(), str(MAX_NODES)),
    "too many constants": (
        _replace(
            2,
            _node(
                "call_function",
                "mul",
                "operator.mul",
                _ref("logprobs"),
                list(range(MAX_CONSTANTS + 1)),
            ),
        ),
        str(MAX_CONSTANTS),
    ),
    "deep nesting": (
        _replace(
            2,
            _node("call_function", "mul", "operator.mul", _ref("logprobs"), [[[[[[[[[[1]]]]]]]]]]),
        ),
        "nest",
    ),
    "non-finite constant": (
        _replace(
            2, _node("call_function", "mul", "operator.mul", _ref("logprobs"), {"float": "inf"})
        ),
        "not finite",
    ),
    "unknown dtype": (
        _replace(8, _node("call_method", "float_1", "to", _ref("gt"), {"dtype": "complex128"})),
        "complex128",
    ),
    "no output": (_weighted_nll()[:-1], "output"),
    "bad metric name": (
        _replace(
            -1,
            _node(
                "output",
                "output",
                "output",
                {"tuple": [_ref("neg"), {"dict": {"loss": _ref("neg")}}]},
            ),
        ),
        "metric",
    ),
    "constant loss": (
        _replace(-1, _node("output", "output", "output", {"tuple": [3.0, {"dict": {}}]})),
        "loss",
    ),
    "placeholders out of order": (
        [_weighted_nll()[1], _weighted_nll()[0], *_weighted_nll()[2:]],
        "placeholders",
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_graph_is_refused_and_changes_nothing(
    http: httpx.Client, server: ServerHandle, session: str, case: str
) -> None:
    nodes, named = HOSTILE[case]
    before = len(server.backend.custom_losses)
    r = post(http, "create_custom_loss", _body(session, 100, nodes))
    assert r.status_code == 400, r.text
    assert named in r.json()["detail"], r.json()["detail"]
    assert len(server.backend.custom_losses) == before


@pytest.mark.parametrize(
    ("inputs", "named"),
    [
        ([{"name": "logprobs", "rank": 0}, {"name": "weights", "rank": 1}], "logprobs"),
        ([{"name": "weights", "rank": 1}, {"name": "logprobs", "rank": 1}], "logprobs"),
        ([{"name": "logprobs", "rank": 1}, {"name": "Weights", "rank": 1}], "inputs[1]"),
        ([{"name": "logprobs", "rank": 1}, {"name": "weights", "rank": 3}], "rank"),
        ([{"name": "logprobs", "rank": 1}], "placeholders"),
    ],
)
def test_bad_inputs_are_refused(http: httpx.Client, session: str, inputs: Any, named: str) -> None:
    r = post(http, "create_custom_loss", _body(session, 101, _weighted_nll(), inputs))
    assert r.status_code == 400, r.text
    assert named in r.text


def test_raw_garbage_is_refused(http: httpx.Client, session: str) -> None:
    bad = _body(session, 102, _weighted_nll())
    bad["graph"]["nodes"][2]["op"] = "exec"
    assert post(http, "create_custom_loss", bad).status_code == 400
    extra = _body(session, 102, _weighted_nll(), code="print(1)")
    assert post(http, "create_custom_loss", extra).status_code == 400


def test_other_tenant_cannot_create_in_or_use_a_session(
    http: httpx.Client, server: ServerHandle, session: str
) -> None:
    loss_id = _create(http, _body(session, 8, _weighted_nll()))
    with httpx.Client(base_url=server.base_url, headers={"X-API-Key": "tml-intruder"}) as other:
        r = post(other, "create_custom_loss", _body(session, 9, _weighted_nll()))
        assert r.status_code == 404
        theirs = new_session(other)
        model = new_model(other, theirs, seq=0, rank=4)
        body = fwdbwd_body(model, 1, _datums([[1.0] * 5, [1.0] * 5]), loss_fn="custom",
                           config={"loss_id": loss_id})  # fmt: skip
        r = post(other, "forward_backward", body)
        assert r.status_code == 404
        assert "loss_id" in r.text


def _bad_request(
    http: httpx.Client, model: str, seq: int, data: Any, config: Any
) -> httpx.Response:
    return post(http, "forward_backward", fwdbwd_body(model, seq, data, loss_fn="custom",
                                                      config=config))  # fmt: skip


def test_bad_custom_requests_are_refused_and_accumulate_nothing(
    http: httpx.Client, server: ServerHandle, session: str
) -> None:
    loss_id = _create(http, _body(session, 10, _weighted_nll()))
    not_scalar = _weighted_nll()
    not_scalar[-1] = _node("output", "output", "output", {"tuple": [_ref("mul"), {"dict": {}}]})
    not_scalar_id = _create(http, _body(session, 11, not_scalar))
    huge = _weighted_nll()
    huge[6] = _node("call_function", "getitem", "torch.zeros", 1 << 30)
    huge_id = _create(http, _body(session, 12, huge))
    model = new_model(http, session, seq=5, rank=4, seed=1)
    good = _datums([[1.0] * 6, [0.5] * 4])
    missing = copy.deepcopy(good)
    del missing[1]["loss_fn_inputs"]["weights"]
    wrong_rank = copy.deepcopy(good)
    wrong_rank[0]["loss_fn_inputs"]["weights"]["shape"] = [2, 3]
    cases = [
        (good, {"loss_id": "loss-nope"}, 404, "loss-nope"),
        (good, {}, 400, "loss_id"),
        (good, {"loss_id": loss_id, "beta": 1.0}, 400, "beta"),
        (missing, {"loss_id": loss_id}, 400, "data[1]"),
        (wrong_rank, {"loss_id": loss_id}, 400, "rank 2"),
        (good, {"loss_id": not_scalar_id}, 400, "scalar"),
        (good, {"loss_id": huge_id}, 400, "elements"),
    ]
    seq = 1
    for data, config, status, named in cases:
        r = _bad_request(http, model, seq, data, config)
        assert r.status_code == status, (config, r.text)
        assert named in r.text, r.text
        seq += 1  # a refused ordered request still uses its seq id
    assert all(not np.any(v) for v in _grads(server, model).values())
    r = _bad_request(http, model, seq, good, {"loss_id": loss_id})
    assert r.status_code == 200
    assert "error" not in result(http, r.json()["request_id"]).json()
    assert any(np.any(v) for v in _grads(server, model).values())


def test_losses_end_with_their_session(http: httpx.Client, server: ServerHandle) -> None:
    sid = new_session(http)
    _create(http, _body(sid, 0, _weighted_nll()))
    before = len(server.backend.custom_losses)
    post(http, f"sessions/{sid}/finish", {"reason": {"type": "success"}})
    assert len(server.backend.custom_losses) == before - 1


def test_docs_list_exactly_the_allow_list() -> None:
    from pathlib import Path

    from tinkjax.losses._graph_ops import DTYPES, FUNCTIONS, METHODS

    doc = (Path(__file__).resolve().parents[2] / "docs" / "server.md").read_text()
    section = doc.split("### Server-side custom losses", 1)[1].split("\n### ", 1)[0]
    listed = section.split("The allow-list", 1)[1].split("`max`/`min` take", 1)[0]
    functions, methods = listed.split("- `call_method`:", 1)
    named = set(re.findall(r"`([A-Za-z_][A-Za-z0-9_.]*)`", functions))
    for target in FUNCTIONS:
        name = target.rpartition(".")[2]
        assert target in named or name in named, target
    assert set(re.findall(r"`([a-z_0-9]+)`", methods.split("- constants", 1)[0])) == set(METHODS)
    for dtype in DTYPES:
        assert f"`{dtype}`" in listed, dtype
