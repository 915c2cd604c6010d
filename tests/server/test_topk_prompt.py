"""``topk_prompt_logprobs`` with the official SDK (protobuf) and raw JSON, against a NumPy
reference computed from the full next-token distribution the training client returns."""

from __future__ import annotations

from typing import Any

import httpx
import numpy as np
import pytest

from .conftest import MICRO, post, result

tinker = pytest.importorskip("tinker")
types = tinker.types

PROMPT = list(b"hello topk world")
K = 4
VOCAB = 260


@pytest.fixture(scope="module")
def setup(sdk_env: None) -> Any:
    with tinker.ServiceClient() as service:
        tc = service.create_lora_training_client(base_model=MICRO, rank=2, seed=4).result()
        # move the adapter off zero so the sampler's weights are not just the base model's
        datum = types.Datum(
            model_input=types.ModelInput.from_ints(PROMPT[:-1]),
            loss_fn_inputs={"target_tokens": PROMPT[1:], "weights": [1.0] * (len(PROMPT) - 1)},
        )
        tc.forward_backward([datum], "cross_entropy")
        tc.optim_step(types.AdamParams(learning_rate=5e-2)).result()
        n = len(PROMPT) - 1
        every = np.tile(np.arange(VOCAB, dtype=np.int64), (n, 1))
        full = types.Datum(
            model_input=types.ModelInput.from_ints(PROMPT[:-1]),
            loss_fn_inputs={"target_tokens": every, "weights": np.zeros((n, VOCAB), np.float32)},
        )
        out = tc.forward([full], "cross_entropy").result()
        full_lp = out.loss_fn_outputs[0]["logprobs"].to_numpy().astype(np.float64)  # [n, V]
        sc = tc.save_weights_and_get_sampling_client().result()
        yield sc, full_lp


def _reference(full_lp: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(-full_lp, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(full_lp, order, axis=1)


def test_sdk_topk_prompt_logprobs_match_numpy(setup: Any) -> None:
    sc, full_lp = setup
    np.testing.assert_allclose(np.exp(full_lp).sum(1), 1.0, rtol=1e-4)  # a full distribution
    params = types.SamplingParams(max_tokens=1)
    res = sc.sample(
        types.ModelInput.from_ints(PROMPT), 1, params,
        include_prompt_logprobs=True, topk_prompt_logprobs=K,
    ).result()  # fmt: skip
    topk = res.topk_prompt_logprobs
    assert topk is not None
    assert len(topk) == len(PROMPT)
    assert topk[0] is None  # the first prompt token has no context
    ids, lps = _reference(full_lp, K)
    for i in range(1, len(PROMPT)):
        row = topk[i]
        assert row is not None
        assert len(row) == K
        assert [t for t, _ in row] == ids[i - 1].tolist(), i
        np.testing.assert_allclose([lp for _, lp in row], lps[i - 1], rtol=1e-4, atol=1e-5)
        # the prompt's own token is scored consistently with the full distribution
        assert res.prompt_logprobs[i] == pytest.approx(full_lp[i - 1, PROMPT[i]], abs=1e-4)
    dense = res.topk_prompt_logprobs_np
    assert dense.token_ids.shape == dense.logprobs.shape == (len(PROMPT), K)


def test_sdk_topk_honours_prompt_logprobs_last_n(setup: Any) -> None:
    sc, full_lp = setup
    res = sc.sample(
        types.ModelInput.from_ints(PROMPT), 1, types.SamplingParams(max_tokens=1),
        include_prompt_logprobs=True, topk_prompt_logprobs=2, prompt_logprobs_last_n=5,
    ).result()  # fmt: skip
    topk = res.topk_prompt_logprobs
    n = len(PROMPT)
    assert topk[: n - 5] == [None] * (n - 5)
    ids, _ = _reference(full_lp, 2)
    assert [[t for t, _ in row] for row in topk[n - 5 :]] == ids[n - 6 :].tolist()
    assert res.prompt_logprobs[: n - 5] == [None] * (n - 5)


@pytest.mark.parametrize("k", [-1, VOCAB + 1, 257])
def test_topk_bounds_are_400_naming_the_field(setup: Any, k: int) -> None:
    sc, _ = setup
    with pytest.raises(tinker.BadRequestError, match="topk_prompt_logprobs"):
        sc.sample(
            types.ModelInput.from_ints(PROMPT), 1, types.SamplingParams(max_tokens=1),
            topk_prompt_logprobs=k,
        ).result()  # fmt: skip


def test_topk_json_wire(http: httpx.Client, setup: Any) -> None:
    body = {
        "prompt": {"chunks": [{"type": "encoded_text", "tokens": PROMPT}]},
        "sampling_params": {"max_tokens": 1},
        "base_model": MICRO,
        "topk_prompt_logprobs": 3,
        "type": "sample",
    }
    r = post(http, "asample", body)
    assert r.status_code == 200, r.text
    done = result(http, r.json()["request_id"])
    assert done.status_code == 200, done.text
    topk = done.json()["topk_prompt_logprobs"]
    assert (topk["k"], topk["length"]) == (3, len(PROMPT))
    ids = np.asarray(topk["token_ids"]).reshape(len(PROMPT), 3)
    lps = np.asarray(topk["logprobs"]).reshape(len(PROMPT), 3)
    assert ids[0].tolist() == [0, 0, 0]
    assert lps[0].tolist() == [-99999.0] * 3
    assert np.all(np.diff(lps[1:], axis=1) <= 0)  # in decreasing order
    assert np.all((lps[1:] < 0) & (lps[1:] > -50))
    assert done.json().get("prompt_logprobs") is None  # not asked for
