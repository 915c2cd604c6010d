"""forward_backward / optim_step semantics on the micro model (float32)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from tinkjax.models import (
    AdamHyper,
    DatumArrays,
    FwdBwdItem,
    ModelRuntime,
    SampleJob,
    UnknownAdapterError,
    trace_counts,
)


def _item(
    adapter: str, datums: list[DatumArrays], loss: str = "cross_entropy", **cfg: float
) -> FwdBwdItem:
    return FwdBwdItem(adapter, datums, loss, cfg)


def _zero(grads: dict[str, np.ndarray]) -> bool:
    return all(not np.any(g) for g in grads.values())


def test_outputs_shapes_sums_and_forward_only(
    runtime: ModelRuntime,
    ce_datum: Callable[..., DatumArrays],
    random_tokens: Callable[[int, int], np.ndarray],
) -> None:
    runtime.create_adapter("t-out", rank=4, seed=0)
    toks = random_tokens(0, 20)
    two_d = DatumArrays(
        toks[:-1],
        {
            "target_tokens": np.stack([toks[1:], toks[:-1]], axis=1),
            "weights": np.full((19, 2), 0.5, np.float32),
        },
    )
    (res,) = runtime.forward_backward([_item("t-out", [ce_datum(toks), two_d])], forward_only=True)
    assert _zero(runtime.accumulated_gradients("t-out"))
    first, second = res.outputs
    assert first["logprobs"].shape == (19,)
    assert first["logprobs"].dtype == np.float32
    assert second["logprobs"].shape == (19, 2)
    assert second["elementwise_loss"].shape == (19, 2)
    np.testing.assert_allclose(second["logprobs"][:, 0], first["logprobs"], rtol=1e-5)
    np.testing.assert_allclose(first["elementwise_loss"], -first["logprobs"], rtol=1e-6)
    total = first["elementwise_loss"].sum() + second["elementwise_loss"].sum()
    assert list(res.metrics) == ["loss:sum"]
    np.testing.assert_allclose(res.metrics["loss:sum"], total, rtol=1e-5)
    assert np.all(first["logprobs"] < 0)
    # The same logprobs through the sampler's prefill (KV-cache path).
    out = runtime.sample(
        SampleJob(runtime.snapshot("t-out"), toks, max_tokens=0, include_prompt_logprobs=True)
    )
    assert out.prompt_logprobs is not None
    assert np.isnan(out.prompt_logprobs[0])
    np.testing.assert_allclose(out.prompt_logprobs[1:], first["logprobs"], rtol=1e-4, atol=1e-5)


def test_mixed_adapters_equal_separate_batches(
    runtime: ModelRuntime,
    ce_datum: Callable[..., DatumArrays],
    random_tokens: Callable[[int, int], np.ndarray],
) -> None:
    for name, seed in (("t-mix-a", 1), ("t-mix-b", 2)):
        runtime.create_adapter(name, rank=4, seed=seed)
        runtime.forward_backward(
            [_item(name, [ce_datum(random_tokens(seed, 30))])], forward_only=False
        )
        runtime.optim_step(name, AdamHyper(learning_rate=1e-2))  # make b non-zero
    da, db = ce_datum(random_tokens(5, 25)), ce_datum(random_tokens(6, 12))
    separate = [
        runtime.forward_backward([_item(n, [d])], forward_only=False)[0]
        for n, d in (("t-mix-a", da), ("t-mix-b", db))
    ]
    grads_sep = {n: runtime.accumulated_gradients(n) for n in ("t-mix-a", "t-mix-b")}
    for n in ("t-mix-a", "t-mix-b"):
        runtime.optim_step(n, AdamHyper(learning_rate=0.0))  # clears the accumulators only
    fused = runtime.forward_backward(
        [_item("t-mix-a", [da]), _item("t-mix-b", [db])], forward_only=False
    )
    for s, f in zip(separate, fused, strict=True):
        np.testing.assert_allclose(
            f.outputs[0]["logprobs"], s.outputs[0]["logprobs"], rtol=1e-5, atol=1e-6
        )
        np.testing.assert_allclose(f.metrics["loss:sum"], s.metrics["loss:sum"], rtol=1e-5)
    for n in ("t-mix-a", "t-mix-b"):
        fused_grads = runtime.accumulated_gradients(n)
        for key, g in grads_sep[n].items():
            np.testing.assert_allclose(fused_grads[key], g, rtol=1e-4, atol=1e-6)


def test_untrained_targets_stay_zero(
    runtime: ModelRuntime,
    ce_datum: Callable[..., DatumArrays],
    random_tokens: Callable[[int, int], np.ndarray],
) -> None:
    runtime.create_adapter(
        "t-attn", rank=4, seed=3, train_attn=True, train_mlp=False, train_unembed=False
    )
    for _ in range(2):
        runtime.forward_backward(
            [_item("t-attn", [ce_datum(random_tokens(7, 30))])], forward_only=False
        )
        metrics = runtime.optim_step("t-attn", AdamHyper(learning_rate=1e-2, weight_decay=0.1))
    assert sorted(metrics) == ["grad_norm:mean", "learning_rate:mean", "step:max"]
    assert metrics["step:max"] == 2.0
    assert metrics["grad_norm:mean"] > 0
    state = runtime.export_state("t-attn", include_optimizer=False)
    assert sorted({k.split(".")[1] for k in state}) == ["k", "o", "q", "v"]
    assert np.any(state["lora.q.b"])
    stack_a, stack_b = runtime._stack["gate"]  # the shared stack keeps this slot's MLP at zero
    slot = runtime._slots["t-attn"]
    assert not np.any(stack_a[slot])
    assert not np.any(stack_b[slot])


def test_validation_errors(
    runtime: ModelRuntime,
    ce_datum: Callable[..., DatumArrays],
    random_tokens: Callable[[int, int], np.ndarray],
) -> None:
    runtime.create_adapter("t-val", rank=4, seed=0)
    good = ce_datum(random_tokens(1, 10))
    cases = [
        (
            DatumArrays(
                np.array([1, 300]), {"target_tokens": np.array([1, 2]), "weights": np.ones(2)}
            ),
            r"input_tokens: token 300",
        ),
        (
            DatumArrays(
                np.zeros(300, np.int64),
                {"target_tokens": np.zeros(300, np.int64), "weights": np.ones(300)},
            ),
            "exceeds max_seq_len 256",
        ),
        (
            DatumArrays(
                good.input_tokens, {"target_tokens": np.zeros(4, np.int64), "weights": np.ones(4)}
            ),
            r"target_tokens'\]: shape \(4,\)",
        ),
        (
            DatumArrays(good.input_tokens, {"target_tokens": good.loss_fn_inputs["target_tokens"]}),
            r"requires \['weights'\]",
        ),
        (
            DatumArrays(
                good.input_tokens,
                {"target_tokens": good.loss_fn_inputs["target_tokens"], "weights": np.ones(3)},
            ),
            r"\['weights'\]: shape",
        ),
    ]
    for datum, message in cases:
        with pytest.raises(ValueError, match=message):
            runtime.forward_backward(
                [_item("t-val", [good]), _item("t-val", [datum])], forward_only=False
            )
    assert _zero(runtime.accumulated_gradients("t-val"))  # nothing ran
    with pytest.raises(UnknownAdapterError, match="unknown adapter 'nope'") as info:
        runtime.forward_backward([_item("nope", [good])], forward_only=True)
    assert isinstance(info.value, KeyError)
    with pytest.raises(ValueError, match="unknown loss"):
        runtime.forward_backward([_item("t-val", [good], loss="mse")], forward_only=True)
    with pytest.raises(ValueError, match="requires \\['beta'\\]"):
        runtime.forward_backward([_item("t-val", [good], loss="dro")], forward_only=True)
    with pytest.raises(ValueError, match="rank"):
        runtime.create_adapter("t-big", rank=9, seed=0)
    with pytest.raises(ValueError, match="already exists"):
        runtime.create_adapter("t-val", rank=4, seed=0)


def test_no_retrace_over_varied_batches(
    runtime: ModelRuntime,
    ce_datum: Callable[..., DatumArrays],
    random_tokens: Callable[[int, int], np.ndarray],
) -> None:
    runtime.create_adapter("t-rt", rank=4, seed=0)
    runtime.create_adapter("t-rt2", rank=4, seed=1)
    rng = np.random.default_rng(0)
    before = trace_counts().get("forward_backward", 0)
    for step in range(10):
        lengths = rng.integers(3, 30, size=rng.integers(1, 5))  # rows 1-4 -> buckets 1, 2, 4
        datums = [ce_datum(random_tokens(step * 10 + i, int(n) + 1)) for i, n in enumerate(lengths)]
        items = [_item("t-rt", datums[:1])]
        if len(datums) > 1:
            items.append(_item("t-rt2", datums[1:]))
        runtime.forward_backward(items, forward_only=False)
    # Length bucket 32, row bucket 4, adapters-per-batch in {1, 2}: at most 2 programs.
    assert trace_counts()["forward_backward"] - before <= 2


def test_training_lowers_loss_and_sampling_reproduces_text(
    runtime: ModelRuntime,
    ce_datum: Callable[..., DatumArrays],
    random_tokens: Callable[[int, int], np.ndarray],
) -> None:
    text = b"abcdefghijklmnopqrstuvwxyz" * 2
    toks = np.frombuffer(text, np.uint8).astype(np.int64)
    datum = ce_datum(toks)
    runtime.create_adapter("t-fit", rank=4, seed=0)
    prompt = toks[:8]

    def greedy_matches() -> int:
        job = SampleJob(runtime.snapshot("t-fit"), prompt, max_tokens=16, temperature=0.0, seed=0)
        got = runtime.sample(job).sequences[0].tokens
        return int(np.sum(got == toks[8:24]))

    before = greedy_matches()
    losses = []
    for _ in range(20):
        (res,) = runtime.forward_backward([_item("t-fit", [datum])], forward_only=False)
        losses.append(res.metrics["loss:sum"])
        runtime.optim_step("t-fit", AdamHyper(learning_rate=2e-2))
    assert losses[-1] < 0.5 * losses[0]
    after = greedy_matches()
    assert after > before
    assert after >= 10
