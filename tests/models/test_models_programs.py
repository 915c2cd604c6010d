"""The jitted cores against themselves: the chunk size and the merged-weight sampler change only
float rounding (float64, micro model); fusing adapters into one call changes nothing; a call's
rows change no program."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tinkjax.models import DatumArrays, FwdBwdItem, ModelRuntime, SampleJob, _batching, trace_counts

from .helpers import nonzero_b


def _datums(seed: int, n: int) -> list[DatumArrays]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        k = int(rng.integers(5, 32))
        toks = rng.integers(0, 256, size=k + 1)
        out.append(DatumArrays(toks[:-1], {
            "target_tokens": toks[1:], "weights": rng.normal(size=k),
            "logprobs": -rng.uniform(3, 7, size=k), "advantages": rng.normal(size=k),
        }))  # fmt: skip
    return out


def _run(rt: ModelRuntime, items: list[FwdBwdItem]) -> tuple[list[Any], dict[str, Any]]:
    """Outputs of one ``forward_backward`` call and each item's adapter's gradient (the
    adapters' accumulators are cleared after)."""
    results = rt.forward_backward(items, forward_only=False)
    grads = {}
    for item in items:
        grads[item.adapter_id] = rt.accumulated_gradients(item.adapter_id)
    rt._acc = jax.tree.map(jnp.zeros_like, rt._acc)
    return [r.outputs for r in results], grads


def _assert_same(got: Any, want: Any, **tol: float) -> None:
    for u, v in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        if tol:
            np.testing.assert_allclose(np.asarray(u), np.asarray(v), **tol)
        else:
            np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


@pytest.mark.parametrize(
    ("loss", "cfg"),
    [("cross_entropy", None), ("ppo", {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2})],
)
def test_chunk_size_changes_only_rounding(
    runtime64: ModelRuntime,
    monkeypatch: pytest.MonkeyPatch,
    loss: str,
    cfg: dict[str, float] | None,
) -> None:
    """One chunk holding every row of an adapter, or chunks of one or two rows: the same
    outputs and gradients to float64 rounding (two adapters, rows interleaved)."""
    with jax.enable_x64(True):
        rt = runtime64
        names = [f"chunk-{loss}-{i}" for i in range(2)]
        for i, name in enumerate(names):
            nonzero_b(rt, name, 20 + i)
        data = _datums(7, 6)
        items = [FwdBwdItem(names[i % 2], [d], loss, cfg) for i, d in enumerate(data)]
        assert _batching.chunk_shape(32, 1) == (64, 8)
        whole = _run(rt, items)
        monkeypatch.setattr(_batching, "FB_CHUNK_TOKENS", 64)  # 2 rows of 32 per chunk
        assert _batching.chunk_shape(32, 1) == (256, 2)
        split = _run(rt, items)
        assert any(np.any(g) for g in jax.tree.leaves(whole[1]))
        _assert_same(split, whole, rtol=1e-11, atol=1e-13)
        for name in names:
            rt.remove_adapter(name)


def test_fused_call_equals_separate_calls(runtime: ModelRuntime) -> None:
    """Items of three adapters in one call (rows interleaved, uneven counts) give every
    adapter exactly the outputs and gradient of its items run alone: each chunk holds one
    adapter's rows, summed in the same order whoever shares the call."""
    rt = runtime
    names = [f"fuse-{i}" for i in range(3)]
    for i, name in enumerate(names):
        nonzero_b(rt, name, 40 + i)
    data = _datums(9, 11)
    items = [
        FwdBwdItem(names[i % 3 if i < 9 else 0], [d], "cross_entropy") for i, d in enumerate(data)
    ]
    fused_out, fused_grads = _run(rt, items)
    for name in names:
        mine = [i for i, item in enumerate(items) if item.adapter_id == name]
        alone_out, alone_grads = _run(rt, [items[i] for i in mine])
        _assert_same(alone_out, [fused_out[i] for i in mine])
        _assert_same(alone_grads[name], fused_grads[name])
    for name in names:
        rt.remove_adapter(name)


def test_rows_and_adapters_of_a_call_change_no_program(runtime: ModelRuntime) -> None:
    """A call's rows never change a shape (a fixed chunk count per length bucket); its
    adapter count does only across powers of two."""
    rt = runtime
    names = [f"rows-{i}" for i in range(4)]
    for i, name in enumerate(names):
        rt.create_adapter(name, rank=4, seed=i)
    rng = np.random.default_rng(3)
    data = _datums(11, 40)
    rt.forward_backward([FwdBwdItem(names[0], data[:1], "cross_entropy")], forward_only=False)
    rt.forward_backward([FwdBwdItem(names[0], data[:1], "cross_entropy")], forward_only=True)
    before = trace_counts()
    for _ in range(5):  # 1-40 rows of one adapter
        n = int(rng.integers(1, 40))
        item = FwdBwdItem(names[0], data[:n], "cross_entropy")
        rt.forward_backward([item], forward_only=bool(rng.integers(2)))
    assert trace_counts() == before
    for n_rows in (3, 17, 40):  # three or four adapters: adapter bucket 4, one program
        items = [
            FwdBwdItem(names[i % 4 if n_rows != 3 else i], [d], "cross_entropy")
            for i, d in enumerate(data[:n_rows])
        ]
        rt.forward_backward(items, forward_only=False)
    after = trace_counts()  # (0 when an earlier test of this runtime compiled bucket 4)
    assert after.get("forward_backward", 0) - before.get("forward_backward", 0) <= 1
    rt._acc = jax.tree.map(jnp.zeros_like, rt._acc)
    for name in names:
        rt.remove_adapter(name)


def test_warmup_compiles_every_training_program_ahead() -> None:
    """With ``warmup``, creating adapters compiles (on the warm-up thread) every training
    program of the stack: calls of any rows and up to the loaded adapters, forward or
    backward, and optimizer steps, then compile nothing."""
    from tinkjax.models import AdamHyper

    # adapter_slots=4: a stack shape no other test's runtime has, so nothing is compiled yet
    rt = ModelRuntime(
        "tinkjax/bytelm-micro", max_lora_rank=8, adapter_slots=4,
        warmup=[("cross_entropy", 20)],
    )  # fmt: skip
    names = [f"warm-{i}" for i in range(3)]
    for i, name in enumerate(names):
        rt.create_adapter(name, rank=4, seed=i)
    assert rt.wait_warmup(timeout=600)
    assert rt.warmup_pending() == 0
    kinds = [key[0] for key in rt.warmup_keys()]
    assert kinds.count("forward_backward") == 3  # adapter buckets 4, 2, 1
    before = trace_counts()
    data = _datums(5, 12)
    for n_adapters, n_rows in ((3, 12), (1, 5), (2, 7), (3, 3)):
        items = [
            FwdBwdItem(names[i % n_adapters], [d], "cross_entropy")
            for i, d in enumerate(data[:n_rows])
        ]
        rt.forward_backward(items, forward_only=False)
        rt.forward_backward(items[:1], forward_only=True)
    for name in names:
        rt.optim_step(name, AdamHyper(learning_rate=1e-3))
    assert trace_counts() == before


def test_warmup_refuses_a_bad_shape() -> None:
    with pytest.raises(ValueError, match="unknown loss"):
        ModelRuntime("tinkjax/bytelm-micro", warmup=[("mse", 20)])
    with pytest.raises(ValueError, match=r"warmup\[0\]: length 0"):
        ModelRuntime("tinkjax/bytelm-micro", warmup=[("cross_entropy", 0)])


def test_sampling_with_an_adapter_matches_training_logprobs(
    runtime64: ModelRuntime,
    ce_datum: Callable[..., DatumArrays],
    random_tokens: Callable[[int, int], np.ndarray],
) -> None:
    """The sampler folds the adapter into the base weights; its prompt logprobs must equal the
    training forward pass's (unmerged) logprobs to float64 rounding."""
    with jax.enable_x64(True):
        rt = runtime64
        nonzero_b(rt, "merge", 31)
        toks = random_tokens(40, 24)
        (res,) = rt.forward_backward(
            [FwdBwdItem("merge", [ce_datum(toks)], "cross_entropy")], forward_only=True
        )
        out = rt.sample(
            SampleJob(rt.snapshot("merge"), toks, max_tokens=0, include_prompt_logprobs=True)
        )
        assert out.prompt_logprobs is not None
        # Outputs are float32 on the wire: compare at float32 precision.
        np.testing.assert_allclose(
            out.prompt_logprobs[1:], res.outputs[0]["logprobs"], rtol=1e-6, atol=1e-6
        )
        rt.remove_adapter("merge")


def test_creating_adapters_with_new_seeds_compiles_nothing(runtime: ModelRuntime) -> None:
    """The seed is a traced argument of LoRA initialisation: one compile serves every seed,
    and the weights are those of ``jax.random.key(seed)`` as before."""
    from tinkjax.models import trace_counts
    from tinkjax.models._adapters import init_lora_weights

    runtime.create_adapter("seed-warm", rank=4, seed=1)
    before = trace_counts().get("init_lora", 0)
    for seed in (2, 3, 2**31 + 11, 987654321):
        runtime.create_adapter(f"seed-{seed}", rank=4, seed=seed)
    assert trace_counts().get("init_lora", 0) == before
    snap = runtime.snapshot("seed-987654321")
    want = init_lora_weights(runtime.config, snap.info, runtime.dtype)  # seed from info, untraced
    for name, (a, b) in want.items():
        np.testing.assert_array_equal(np.asarray(snap.weights[name][0]), np.asarray(a))
        np.testing.assert_array_equal(np.asarray(snap.weights[name][1]), np.asarray(b))
    other = runtime.snapshot("seed-2")
    assert not np.array_equal(np.asarray(other.weights["q"][0]), np.asarray(snap.weights["q"][0]))
    for seed in (2, 3, 2**31 + 11, 987654321):
        runtime.remove_adapter(f"seed-{seed}")
    runtime.remove_adapter("seed-warm")
