"""The jitted cores against themselves: backward micro-batching and the merged-weight sampler
change only float rounding (float64, micro model)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tinkjax.losses import get_loss_definition
from tinkjax.models import DatumArrays, ModelRuntime, SampleJob
from tinkjax.models import _programs as programs
from tinkjax.models._batching import pack_rows, validate_datum

from .helpers import nonzero_b


def _packed(rt: ModelRuntime, adapters: list[str], loss: str, cfg: dict[str, float]) -> Any:
    rng = np.random.default_rng(7)
    rows = []
    for i in range(6):  # 6 datums -> 8 rows, two of them padding
        n = int(rng.integers(5, 32))
        toks = rng.integers(0, 256, size=n + 1)
        datum = DatumArrays(toks[:-1], {
            "target_tokens": toks[1:], "weights": rng.normal(size=n),
            "logprobs": -rng.uniform(3, 7, size=n), "advantages": rng.normal(size=n),
        })  # fmt: skip
        valid = validate_datum(
            datum, where="d", loss_fn=loss, vocab=rt.config.vocab_size,
            max_len=rt.config.max_seq_len, dtype=rt._np_dtype,
        )  # fmt: skip
        rows.append((valid, rt._slots[adapters[i % len(adapters)]], cfg))
    definition = get_loss_definition(loss)
    return pack_rows(
        rows, slot_scale=rt._scale, input_keys=tuple(definition.input_arguments),
        config_keys=tuple(sorted(cfg)), length=32, width=1, dtype=rt._np_dtype,
    )  # fmt: skip


def _run_core(rt: ModelRuntime, loss: str, packed: Any, chunk_tokens: int) -> Any:
    old = programs.FB_CHUNK_TOKENS
    programs.FB_CHUNK_TOKENS = chunk_tokens
    try:
        # A fresh function per call, so jit traces it under this chunk size.
        def core(*args: Any, **kwargs: Any) -> Any:
            return programs.forward_backward_core(*args, **kwargs)

        acc = jax.tree.map(jnp.zeros_like, rt._acc)
        return jax.jit(core, static_argnames=("config", "loss_name"))(
            config=rt.config, loss_name=loss, base=rt._base, stack=rt._stack, acc=acc,
            batch_slots=packed.batch_slots, acc_slots=packed.batch_slots, scale=packed.scale,
            row_slot=packed.row_slot, tokens=packed.tokens, targets=packed.targets, valid=packed.valid,
            inputs=packed.inputs, loss_config=packed.loss_config,
        )  # fmt: skip
    finally:
        programs.FB_CHUNK_TOKENS = old


@pytest.mark.parametrize(
    ("loss", "cfg", "n_adapters"),
    [("cross_entropy", {}, 1), ("ppo", {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2}, 2)],
)
def test_backward_micro_batches_match_one_batch(
    runtime64: ModelRuntime, loss: str, cfg: dict[str, float], n_adapters: int
) -> None:
    with jax.enable_x64(True):
        rt = runtime64
        names = [f"chunk-{loss}-{i}" for i in range(n_adapters)]
        for i, name in enumerate(names):
            nonzero_b(rt, name, 20 + i)
        packed = _packed(rt, names, loss, cfg)
        assert programs.chunk_rows(8, 32) == 8  # 256 tokens: one micro-batch
        assert programs.chunk_rows(8, 32 * 3) == 2
        whole = _run_core(rt, loss, packed, chunk_tokens=1 << 20)
        split = _run_core(rt, loss, packed, chunk_tokens=64)  # 4 micro-batches of 2 rows
        assert any(np.any(np.asarray(x)) for x in jax.tree.leaves(whole[0]))
        for u, v in zip(jax.tree.leaves(split), jax.tree.leaves(whole), strict=True):
            np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-11, atol=1e-13)
        for name in names:
            rt.remove_adapter(name)


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
        from tinkjax.models import FwdBwdItem

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
