"""The decoder: seeded base weights and one forward pass for training, prefill and decode.

Layers are stacked on a leading ``L`` axis and run under ``lax.scan`` (one compiled block).
LoRA enters every projection through ``tinkjax.kernels.lora_delta`` when a ``LoraBatch`` is
given; the base weights are never differentiated.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from tinkjax.kernels import lora_delta
from tinkjax.models._config import ModelConfig

__all__ = ["BaseParams", "KVCache", "LoraBatch", "forward", "init_base_params"]

BaseParams = dict[str, jax.Array]
"""Flat base weights: ``embed [V, d]``, ``final_norm [d]``, ``lm_head [d, V]`` and the
per-layer ``attn_norm [L, d]``, ``q/k/v/o [L, d, d]``, ``mlp_norm [L, d]``,
``gate/up [L, d, f]``, ``down [L, f, d]``."""

LAYER_KEYS = ("attn_norm", "q", "k", "v", "o", "mlp_norm", "gate", "up", "down")


class LoraBatch(NamedTuple):
    """LoRA weights of the ``k`` adapters used by a batch, and each row's adapter.

    Attributes:
        weights: target -> ``(a [L_t, k, d_in, R], b [L_t, k, R, d_out])``.
        scale: ``[k]`` float, ``alpha / rank`` per adapter.
        slot: ``[B]`` int, index into ``k`` of each row.
    """

    weights: dict[str, tuple[jax.Array, jax.Array]]
    scale: jax.Array
    slot: jax.Array


class KVCache(NamedTuple):
    """Keys and values of every layer: ``[L, B, Tc, H, hd]`` each."""

    k: jax.Array
    v: jax.Array


def init_base_params(config: ModelConfig, dtype: jnp.dtype) -> BaseParams:
    """Deterministic base weights of ``config`` (drawn in float32, then cast to ``dtype``).

    Projections are ``N(0, 1/d_in)``; the residual outputs (``o``, ``down``) are further
    scaled by ``1/sqrt(2 L)`` so the random network's activations stay O(1).
    """
    d, f, n_l, v = config.d_model, config.d_ff, config.n_layers, config.vocab_size
    keys = iter(jax.random.split(jax.random.key(config.seed), 16))
    resid = (2.0 * n_l) ** -0.5

    def normal(shape: tuple[int, ...], fan_in: int, gain: float = 1.0) -> jax.Array:
        w = jax.random.normal(next(keys), shape, jnp.float32) * (gain / fan_in**0.5)
        out: jax.Array = w.astype(dtype)
        return out

    return {
        "embed": normal((v, d), 1),
        "attn_norm": jnp.ones((n_l, d), dtype),
        "q": normal((n_l, d, d), d),
        "k": normal((n_l, d, d), d),
        "v": normal((n_l, d, d), d),
        "o": normal((n_l, d, d), d, resid),
        "mlp_norm": jnp.ones((n_l, d), dtype),
        "gate": normal((n_l, d, f), d),
        "up": normal((n_l, d, f), d),
        "down": normal((n_l, f, d), f, resid),
        "final_norm": jnp.ones((d,), dtype),
        "lm_head": normal((d, v), d),
    }


def _rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    var = jnp.mean(x * x, axis=-1, keepdims=True)
    return x * jax.lax.rsqrt(var + eps) * weight.reshape((1,) * (x.ndim - 1) + weight.shape)


def _rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
    """Rotary embedding of ``x [B, T, H, hd]`` at ``positions [T]`` (rotate-half form)."""
    half = x.shape[-1] // 2
    freqs = theta ** (-jnp.arange(half, dtype=x.dtype) / half)  # [hd/2]
    angles = positions.astype(x.dtype)[:, None] * freqs[None, :]  # [T, hd/2]
    cos = jnp.cos(angles)[None, :, None, :]
    sin = jnp.sin(angles)[None, :, None, :]
    x1, x2 = x[..., :half], x[..., half:]
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def _project(
    x: jax.Array,
    w: jax.Array,
    name: str,
    lora_w: dict[str, tuple[jax.Array, jax.Array]],
    lora: LoraBatch | None,
) -> jax.Array:
    y = x @ w
    if lora is not None and name in lora_w:
        a, b = lora_w[name]
        y = y + lora_delta(x, a, b, lora.slot, lora.scale)
    return y


def forward(
    config: ModelConfig,
    params: BaseParams,
    tokens: jax.Array,
    *,
    lora: LoraBatch | None = None,
    cache: KVCache | None = None,
    start: jax.Array | int = 0,
) -> tuple[jax.Array, KVCache | None]:
    """Logits of every position, optionally reading and writing a KV cache.

    Args:
        config: the model's static shape.
        params: base weights.
        tokens: ``[B, T]`` int32.
        lora: adapters of the rows, or ``None`` for the base model.
        cache: without a cache, attention is causal within ``tokens`` (training). With one
            (``[L, B, Tc, H, hd]``), the new keys/values are written at ``start`` and every
            query attends to cache positions ``<= its own position`` (prefill and decode).
        start: absolute position of ``tokens[:, 0]`` (int or traced scalar).

    Returns:
        ``([B, T, V]`` logits, the updated cache or ``None``).
    """
    bsz, seq = tokens.shape
    n_h, hd = config.n_heads, config.head_dim
    positions = jnp.asarray(start, jnp.int32) + jnp.arange(seq, dtype=jnp.int32)  # [T]
    h = params["embed"][tokens]  # [B, T, d]
    layer_params = {k: params[k] for k in LAYER_KEYS}
    lora_layers = (
        {k: ab for k, ab in lora.weights.items() if k != "lm_head"} if lora is not None else {}
    )

    def block(
        h: jax.Array,
        xs: tuple[dict[str, jax.Array], dict[str, tuple[jax.Array, jax.Array]], KVCache | None],
    ) -> tuple[jax.Array, KVCache | None]:
        p, lw, layer_cache = xs
        x = _rms_norm(h, p["attn_norm"], config.norm_eps)
        q = _project(x, p["q"], "q", lw, lora).reshape(bsz, seq, n_h, hd)
        k = _project(x, p["k"], "k", lw, lora).reshape(bsz, seq, n_h, hd)
        v = _project(x, p["v"], "v", lw, lora).reshape(bsz, seq, n_h, hd)
        q = _rope(q, positions, config.rope_theta)
        k = _rope(k, positions, config.rope_theta)
        if layer_cache is None:
            keys, values, key_pos = k, v, positions
            new_cache = None
        else:
            at = (0, positions[0], 0, 0)
            keys = jax.lax.dynamic_update_slice(layer_cache.k, k.astype(layer_cache.k.dtype), at)
            values = jax.lax.dynamic_update_slice(layer_cache.v, v.astype(layer_cache.v.dtype), at)
            key_pos = jnp.arange(keys.shape[1], dtype=jnp.int32)
            new_cache = KVCache(keys, values)
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, keys) / jnp.sqrt(jnp.asarray(hd, q.dtype))
        visible = key_pos[None, :] <= positions[:, None]  # [T, Tk]
        scores = jnp.where(visible[None, None], scores, jnp.finfo(scores.dtype).min)  # type: ignore[no-untyped-call]
        attn = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores, axis=-1), values)
        h = h + _project(attn.reshape(bsz, seq, n_h * hd), p["o"], "o", lw, lora)
        x = _rms_norm(h, p["mlp_norm"], config.norm_eps)
        gate = _project(x, p["gate"], "gate", lw, lora)
        up = _project(x, p["up"], "up", lw, lora)
        h = h + _project(jax.nn.silu(gate) * up, p["down"], "down", lw, lora)
        return h, new_cache

    h, new_cache = jax.lax.scan(block, h, (layer_params, lora_layers, cache))
    x = _rms_norm(h, params["final_norm"], config.norm_eps)
    head = (
        {"lm_head": (lora.weights["lm_head"][0][0], lora.weights["lm_head"][1][0])}
        if (lora is not None and "lm_head" in lora.weights)
        else {}
    )
    logits = _project(x, params["lm_head"], "lm_head", head, lora)
    return logits, new_cache
