"""The jitted pure cores of the runtime: forward(+backward), the optimizer step, sampling.

Everything here is arrays in, arrays out. The adapter *stack* holds every adapter slot:
target -> ``(a [S, L_t, d_in, R], b [S, L_t, R, d_out])``; an adapter of rank ``r < R`` is
zero-padded (its extra ``a`` columns and ``b`` rows are zero, so their gradients are exactly
zero and AdamW keeps them at zero). A batch gathers the ``k`` slots it uses (``batch_slots``)
and differentiates only those.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from tinkjax.kernels import filter_logits, target_logprobs
from tinkjax.losses import compute_elementwise_loss
from tinkjax.models._config import ModelConfig
from tinkjax.models._transformer import BaseParams, KVCache, LoraBatch, forward, merge_lora

__all__ = [
    "LoraStack",
    "commit_core",
    "finite_rows_core",
    "forward_backward_core",
    "forward_core",
    "logprobs_vjp_core",
    "optim_core",
    "sample_core",
    "vjp_backward_core",
    "zero_slot_core",
]

LoraStack = dict[str, tuple[jax.Array, jax.Array]]


def _batch_lora(sub: LoraStack, scale: jax.Array, row_slot: jax.Array) -> LoraBatch:
    """``[k, L_t, ...]`` slot-major weights -> the layer-major ``LoraBatch`` of ``forward``."""
    weights = {t: (jnp.moveaxis(a, 0, 1), jnp.moveaxis(b, 0, 1)) for t, (a, b) in sub.items()}
    return LoraBatch(weights, scale, row_slot)


def _objective(
    sub: LoraStack,
    config: ModelConfig,
    loss_name: str,
    base: BaseParams,
    scale: jax.Array,
    row_slot: jax.Array,
    tokens: jax.Array,
    targets: jax.Array,
    valid: jax.Array,
    inputs: Mapping[str, jax.Array],
    loss_config: Mapping[str, jax.Array],
) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    """Summed loss of a padded batch and its ``([B, T, K]`` logprobs, per-token losses)."""
    logits, _ = forward(config, base, tokens, lora=_batch_lora(sub, scale, row_slot))
    logprobs = target_logprobs(logits, targets)  # [B, T, K]
    rows = tokens.shape[0]
    segments = jnp.broadcast_to(jnp.arange(rows, dtype=jnp.int32)[:, None, None], logprobs.shape)
    per_row_config = {
        k: v.astype(logprobs.dtype).reshape(rows, 1, 1) for k, v in loss_config.items()
    }
    elementwise = compute_elementwise_loss(
        loss_name, logprobs, inputs, per_row_config, segment_ids=segments, num_segments=rows
    )
    # Padding (rows, positions, K columns) contributes exactly zero to value and gradient.
    elementwise = jnp.where(valid, elementwise, jnp.zeros_like(elementwise))
    return jnp.sum(elementwise), (logprobs, elementwise)


def _gather(stack: LoraStack, batch_slots: jax.Array) -> LoraStack:
    return {t: (a[batch_slots], b[batch_slots]) for t, (a, b) in stack.items()}


def _chunk_lora(stack: LoraStack, slot: jax.Array) -> LoraStack:
    """The ``[1, L_t, ...]`` weights of stack slot ``slot`` (one adapter: the merged matmul)."""
    take = jax.lax.dynamic_index_in_dim
    return {
        t: (take(a, slot, keepdims=True), take(b, slot, keepdims=True))
        for t, (a, b) in stack.items()
    }


def _chunk(tree: Any, i: jax.Array) -> Any:
    """Entry ``i`` of every leaf's leading (chunk) axis."""
    return jax.tree.map(lambda x: jax.lax.dynamic_index_in_dim(x, i, keepdims=False), tree)


def forward_core(
    config: ModelConfig,
    loss_name: str,
    base: BaseParams,
    stack: LoraStack,
    chunk_slot: jax.Array,
    n_live: jax.Array,
    chunk_scale: jax.Array,
    tokens: jax.Array,
    targets: jax.Array,
    valid: jax.Array,
    inputs: Mapping[str, jax.Array],
    loss_config: Mapping[str, jax.Array],
) -> tuple[jax.Array, jax.Array]:
    """Forward only, chunk by chunk (as ``forward_backward_core``): ``([C, P, T, K]``
    logprobs, per-token losses; zero past the live chunks)."""
    put = jax.lax.dynamic_update_index_in_dim
    per_chunk = (chunk_slot, chunk_scale, tokens, targets, valid, inputs, loss_config)

    def body(i: jax.Array, out: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        slot, scale, c_tokens, c_targets, c_valid, c_inputs, c_config = _chunk(per_chunk, i)
        _, (lp, el) = _objective(
            _chunk_lora(stack, slot), config, loss_name, base, scale.reshape(1),
            jnp.zeros(c_tokens.shape[:1], jnp.int32), c_tokens, c_targets, c_valid, c_inputs,
            c_config,
        )  # fmt: skip
        return put(out[0], lp, i, 0), put(out[1], el, i, 0)

    zeros = jnp.zeros(targets.shape, chunk_scale.dtype)
    return jax.lax.fori_loop(0, n_live, body, (zeros, zeros))  # type: ignore[no-any-return]


def forward_backward_core(
    config: ModelConfig,
    loss_name: str,
    base: BaseParams,
    stack: LoraStack,
    acc: LoraStack,
    chunk_slot: jax.Array,
    chunk_acc: jax.Array,
    n_live: jax.Array,
    chunk_scale: jax.Array,
    tokens: jax.Array,
    targets: jax.Array,
    valid: jax.Array,
    inputs: Mapping[str, jax.Array],
    loss_config: Mapping[str, jax.Array],
) -> tuple[LoraStack, jax.Array, jax.Array]:
    """Forward and backward, one chunk of one adapter's rows at a time; adds each chunk's
    gradient into ``acc`` (donated) at the chunk's index.

    Every chunk runs one adapter through the merged-weight LoRA matmul (``lora_linear`` with
    one slot), so a call's cost per row does not depend on how many adapters share it (the
    grouped-GEMM idea of Punica / S-LoRA, with chunks as the groups). The loop runs over the
    ``n_live`` live chunks only (a traced trip count), so a call's fixed chunk count costs
    nothing past them. The chunks also bound the backward pass's temporary buffer to
    ``FB_CHUNK_TOKENS``' worth.

    Args:
        acc: where the gradients go: ``[k, ...]`` per target (a scratch accumulator of the
            call's adapters, committed to the adapters' accumulator only if it is finite).
        chunk_slot: ``[C]`` stack slot of each chunk's adapter.
        chunk_acc: ``[C]`` the index in ``acc`` of each chunk's adapter.
        n_live: int32 scalar, how many chunks (the first ones) hold rows.
        chunk_scale: ``[C]`` ``alpha / rank`` of each chunk's adapter.
        tokens: ``[C, P, T]`` int32; targets ``[C, P, T, K]`` int32; valid ``[C, P, T, K]``.
        inputs: wire key -> ``[C, P, T, K]`` float loss inputs.
        loss_config: config key -> ``[C, P]`` float (per row, so items with different configs
            share one call).

    Returns:
        ``(acc, [C, P, T, K]`` logprobs, per-token losses; zero past the live chunks).
    """
    grad_fn = jax.grad(_objective, has_aux=True)
    take, put = jax.lax.dynamic_index_in_dim, jax.lax.dynamic_update_index_in_dim
    per_chunk = (chunk_slot, chunk_acc, chunk_scale, tokens, targets, valid, inputs, loss_config)
    Carry = tuple[LoraStack, jax.Array, jax.Array]

    def body(i: jax.Array, carry: Carry) -> Carry:
        total, lp_out, el_out = carry
        slot, index, scale, c_tokens, c_targets, c_valid, c_inputs, c_config = _chunk(per_chunk, i)
        grads, (lp, el) = grad_fn(
            _chunk_lora(stack, slot), config, loss_name, base, scale.reshape(1),
            jnp.zeros(c_tokens.shape[:1], jnp.int32), c_tokens, c_targets, c_valid, c_inputs,
            c_config,
        )  # fmt: skip
        total = {
            t: tuple(
                put(x, take(x, index, keepdims=False) + g[0], index, 0)
                for x, g in zip(total[t], grads[t], strict=True)
            )
            for t in total
        }
        return total, put(lp_out, lp, i, 0), put(el_out, el, i, 0)

    zeros = jnp.zeros(targets.shape, chunk_scale.dtype)
    new_acc, logprobs, elementwise = jax.lax.fori_loop(0, n_live, body, (acc, zeros, zeros))
    return new_acc, logprobs, elementwise


def logprobs_vjp_core(
    config: ModelConfig,
    base: BaseParams,
    stack: LoraStack,
    batch_slots: jax.Array,
    scale: jax.Array,
    row_slot: jax.Array,
    tokens: jax.Array,
    targets: jax.Array,
) -> tuple[jax.Array, Any]:
    """The forward half of a pass whose loss is applied outside (server-side custom losses):
    ``([B, T, K]`` logprobs, the VJP of the logprobs in the used slots' weights). The VJP is a
    pytree of the saved activations; :func:`vjp_backward_core` runs the backward half."""

    def logprobs_of(sub: LoraStack) -> jax.Array:
        logits, _ = forward(config, base, tokens, lora=_batch_lora(sub, scale, row_slot))
        return target_logprobs(logits, targets)

    return jax.vjp(logprobs_of, _gather(stack, batch_slots))


def vjp_backward_core(
    vjp: Any, cotangent: jax.Array, acc: LoraStack, acc_slots: jax.Array
) -> LoraStack:
    """The backward half: ``acc`` (donated) plus the gradient of ``sum(cotangent * logprobs)``
    (``cotangent [B, T, K]``: the loss's gradient in the logprobs, zero on padding)."""
    (grads,) = vjp(cotangent)
    return {
        t: (acc[t][0].at[acc_slots].add(ga), acc[t][1].at[acc_slots].add(gb))
        for t, (ga, gb) in grads.items()
    }


def finite_rows_core(tree: LoraStack) -> jax.Array:
    """``[n]`` bool: whether every value of entry ``i`` (of every target) is finite."""
    flags = [
        jnp.all(jnp.isfinite(x.reshape(x.shape[0], -1)), axis=1)
        for pair in tree.values()
        for x in pair
    ]
    return jnp.all(jnp.stack(flags), axis=0)


def commit_core(acc: LoraStack, delta: LoraStack, slots: jax.Array, keep: jax.Array) -> LoraStack:
    """``acc`` (donated) plus ``delta [n]`` at stack ``slots [n]`` where ``keep [n]``."""

    def add(x: jax.Array, d: jax.Array) -> jax.Array:
        mask = keep.reshape(-1, *([1] * (d.ndim - 1)))
        return x.at[slots].add(jnp.where(mask, d, jnp.zeros_like(d)).astype(x.dtype))

    return {t: (add(a, delta[t][0]), add(b, delta[t][1])) for t, (a, b) in acc.items()}


def _slice(stack: LoraStack, slot: jax.Array) -> LoraStack:
    take = jax.lax.dynamic_index_in_dim
    return {
        t: (take(a, slot, keepdims=False), take(b, slot, keepdims=False))
        for t, (a, b) in stack.items()
    }


def _put(stack: LoraStack, slot: jax.Array, values: LoraStack) -> LoraStack:
    put = jax.lax.dynamic_update_index_in_dim
    return {
        t: (
            put(a, values[t][0].astype(a.dtype), slot, 0),
            put(b, values[t][1].astype(b.dtype), slot, 0),
        )
        for t, (a, b) in stack.items()
    }


def optim_core(
    stack: LoraStack,
    acc: LoraStack,
    opt_state: optax.OptState,
    slot: jax.Array,
    hyper: Mapping[str, jax.Array],
) -> tuple[LoraStack, optax.OptState, dict[str, jax.Array]]:
    """One AdamW step of the adapter in ``slot`` on its accumulated gradient. ``stack`` and
    ``opt_state`` are donated and updated in place; ``acc`` is only read (zero its slot with
    ``zero_slot_core`` afterwards: reading and writing two donated stacks in one program makes
    XLA copy both whole stacks).

    The step is committed only if the gradient norm, the new weights and the new moments are
    all finite (``stats["finite"]``); otherwise weights and optimizer state come back exactly
    as they were.

    Args:
        hyper: scalars ``learning_rate, beta1, beta2, eps, weight_decay, grad_clip_norm``
            (``grad_clip_norm <= 0``: no clipping; else the global norm is clipped to it).

    Returns:
        ``(stack, opt_state, {"grad_norm": pre-clip global norm, "step": the count after the
        call, "finite": whether the step was committed})``.
    """
    params = _slice(stack, slot)
    grads = _slice(acc, slot)
    norm = optax.tree.norm(grads)
    clip = hyper["grad_clip_norm"]
    factor = jnp.where((clip > 0) & (norm > clip), clip / jnp.maximum(norm, 1e-30), 1.0)
    grads = jax.tree.map(lambda g: g * factor.astype(g.dtype), grads)
    tx = optax.adamw(
        learning_rate=hyper["learning_rate"],
        b1=hyper["beta1"],
        b2=hyper["beta2"],
        eps=hyper["eps"],
        weight_decay=hyper["weight_decay"],
    )
    updates, new_state = tx.update(grads, opt_state, params)
    new_params = optax.apply_updates(params, updates)
    leaves = jax.tree.leaves((new_params, new_state))
    finite = jnp.isfinite(norm) & jnp.all(
        jnp.stack(
            [jnp.all(jnp.isfinite(x)) for x in leaves if jnp.issubdtype(x.dtype, jnp.floating)]
        )
    )
    new_params = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new_params, params)
    new_state = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new_state, opt_state)
    count = new_state[0].count
    stats = {"grad_norm": norm, "step": count, "finite": finite}
    return _put(stack, slot, new_params), new_state, stats


def zero_slot_core(acc: LoraStack, slot: jax.Array) -> LoraStack:
    """``acc`` with slot ``slot`` zeroed (``acc`` donated: an in-place write)."""
    return _put(acc, slot, jax.tree.map(jnp.zeros_like, _slice(acc, slot)))


def _stop_hit(tail: jax.Array, stops: jax.Array, stop_lens: jax.Array) -> jax.Array:
    """``[n]``: does ``tail [n, Ls]`` (last generated tokens, right-aligned) end with one of
    ``stops [Ns, Ls]`` (right-aligned, ``stop_lens [Ns]``; length 0 = unused)?"""
    width = stops.shape[1]
    considered = jnp.arange(width)[None, :] >= (width - stop_lens)[:, None]  # [Ns, Ls]
    equal = tail[:, None, :] == stops[None, :, :]  # [n, Ns, Ls]
    match = jnp.all(equal | ~considered[None], axis=-1) & (stop_lens > 0)[None, :]
    return jnp.any(match, axis=-1)


def sample_core(
    config: ModelConfig,
    n_rows: int,
    gen_len: int,
    base: BaseParams,
    lora: LoraStack | None,
    scale: jax.Array,
    prompt: jax.Array,
    prompt_len: jax.Array,
    max_tokens: jax.Array,
    temperature: jax.Array,
    top_k: jax.Array,
    top_p: jax.Array,
    key: jax.Array,
    stops: jax.Array,
    stop_lens: jax.Array,
    row_offset: jax.Array,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array]:
    """Prefill the prompt once, then decode ``n_rows`` samples with a shared KV cache.

    Args:
        n_rows, gen_len: static row count and generation buffer (``>= max_tokens``).
        lora: one adapter as ``(a [L_t, d_in, r], b [L_t, r, d_out])``, or ``None``.
        scale: ``[1]`` float.
        prompt: ``[Tp]`` int32, padded; ``prompt_len`` its true length (>= 1).
        max_tokens, temperature, top_k, top_p: scalars (``temperature == 0``: greedy).
        key: PRNG key; row ``i`` draws its step-``j`` token from
            ``fold_in(fold_in(key, row_offset + i), j)`` so a sample does not depend on how many
            rows the call has (a request sampled in pieces gives the same samples).
        stops, stop_lens: ``[Ns, Ls]`` right-aligned stop sequences and their lengths.
        row_offset: int32 scalar, the index in the request of this call's first row.

    Returns:
        ``tokens [n, gen_len]``, ``logprobs [n, gen_len]`` (raw model log-softmax of each
        sampled token), ``lengths [n]``, ``stopped [n]`` bool, ``prompt_logprobs [Tp - 1]``
        (entry ``i`` is ``log p(prompt[i+1] | prompt[:i+1])``).
    """
    p_pad = prompt.shape[0]
    cache_len = p_pad + gen_len
    # The adapter is fixed for the whole call: fold it into the base weights once, so prefill
    # and every decode step run the plain model.
    weights = base if lora is None else merge_lora(base, lora, scale[0])
    shape = (config.n_layers, 1, cache_len, config.kv_heads, config.head_dim)
    empty = KVCache(jnp.zeros(shape, base["embed"].dtype), jnp.zeros(shape, base["embed"].dtype))
    logits, cache = forward(config, weights, prompt[None, :], cache=empty, start=0)
    assert cache is not None
    prompt_lp = target_logprobs(logits[0, :-1], prompt[1:])
    first = jax.lax.dynamic_index_in_dim(logits[0], prompt_len - 1, keepdims=False)  # [V]
    cache = KVCache(*(jnp.repeat(c, n_rows, axis=1) for c in cache))
    row_keys = jax.vmap(lambda i: jax.random.fold_in(key, row_offset + i))(
        jnp.arange(n_rows, dtype=jnp.int32)
    )
    ones = jnp.ones((n_rows,), base["embed"].dtype)
    temp, k_arr, p_arr = temperature * ones, jnp.full((n_rows,), top_k), top_p * ones

    def step(carry: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
        i, k_cache, v_cache, cur, toks, lps, done, lengths, tail = carry
        keys = jax.vmap(lambda rk: jax.random.fold_in(rk, i))(row_keys)
        filtered = filter_logits(cur, temp, k_arr, p_arr)
        drawn = jax.vmap(jax.random.categorical)(keys, filtered)
        token = jnp.where(temp > 0, drawn, jnp.argmax(cur, axis=-1)).astype(jnp.int32)
        logprob = target_logprobs(cur, token)
        active = ~done
        toks = toks.at[:, i].set(jnp.where(active, token, 0))
        lps = lps.at[:, i].set(jnp.where(active, logprob, 0.0).astype(lps.dtype))
        lengths = lengths + active.astype(jnp.int32)
        tail = jnp.concatenate([tail[:, 1:], token[:, None]], axis=1)
        done = done | (active & _stop_hit(tail, stops, stop_lens))
        nxt, new_cache = forward(
            config, weights, token[:, None], cache=KVCache(k_cache, v_cache),
            start=prompt_len + i,
        )  # fmt: skip
        assert new_cache is not None
        return (i + 1, new_cache.k, new_cache.v, nxt[:, 0], toks, lps, done, lengths, tail)

    def keep_going(carry: tuple[jax.Array, ...]) -> jax.Array:
        i, done = carry[0], carry[6]
        return (i < max_tokens) & ~jnp.all(done)

    init = (
        jnp.asarray(0, jnp.int32), cache.k, cache.v, jnp.broadcast_to(first, (n_rows, first.shape[0])),
        jnp.zeros((n_rows, gen_len), jnp.int32), jnp.zeros((n_rows, gen_len), logits.dtype),
        jnp.zeros((n_rows,), bool), jnp.zeros((n_rows,), jnp.int32),
        jnp.full((n_rows, stops.shape[1]), -1, jnp.int32),
    )  # fmt: skip
    final = jax.lax.while_loop(keep_going, step, init)  # type: ignore[arg-type]
    return final[4], final[5], final[7], final[6], prompt_lp
