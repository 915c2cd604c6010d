"""The decoder: seeded base weights and one forward pass for training, prefill and decode.

Layer weights are stacked on a leading ``L`` axis; the forward pass unrolls the layers.
LoRA enters every projection through ``tinkjax.kernels.lora_linear`` when a ``LoraBatch`` is
given; the base weights are never differentiated. ``merge_lora`` folds one adapter into the
base weights (for sampling, where the weights stay fixed over many decode steps).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from tinkjax.kernels import lora_linear
from tinkjax.models._config import ModelConfig

__all__ = ["BaseParams", "KVCache", "LoraBatch", "forward", "init_base_params", "merge_lora"]

BaseParams = dict[str, jax.Array]
"""Flat base weights: ``embed [V, d]``, ``final_norm [d]``, ``lm_head [d, V]`` (absent when
the embeddings are tied) and the per-layer ``attn_norm [L, d]``, ``q [L, d, H hd]``,
``k/v [L, d, Hkv hd]``, ``o [L, H hd, d]``, ``mlp_norm [L, d]``, ``gate/up [L, d, f]``,
``down [L, f, d]``; with ``qkv_bias`` also ``q_bias [L, H hd]``, ``k_bias/v_bias [L, Hkv hd]``;
with ``qk_norm`` also ``q_norm/k_norm [L, hd]``."""

LAYER_KEYS = ("attn_norm", "q", "k", "v", "o", "mlp_norm", "gate", "up", "down")
BIAS_KEYS = ("q_bias", "k_bias", "v_bias")
QK_NORM_KEYS = ("q_norm", "k_norm")


def layer_keys(config: ModelConfig) -> tuple[str, ...]:
    """The per-layer (``[L, ...]``) base weights of ``config``."""
    extra = (BIAS_KEYS if config.qkv_bias else ()) + (QK_NORM_KEYS if config.qk_norm else ())
    return LAYER_KEYS + extra


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
    qd, kvd = config.q_dim, config.kv_dim
    keys = iter(jax.random.split(jax.random.key(config.seed), 16))
    resid = (2.0 * n_l) ** -0.5

    def normal(shape: tuple[int, ...], fan_in: int, gain: float = 1.0) -> jax.Array:
        w = jax.random.normal(next(keys), shape, jnp.float32) * (gain / fan_in**0.5)
        out: jax.Array = w.astype(dtype)
        return out

    params = {
        "embed": normal((v, d), 1),
        "attn_norm": jnp.ones((n_l, d), dtype),
        "q": normal((n_l, d, qd), d),
        "k": normal((n_l, d, kvd), d),
        "v": normal((n_l, d, kvd), d),
        "o": normal((n_l, qd, d), qd, resid),
        "mlp_norm": jnp.ones((n_l, d), dtype),
        "gate": normal((n_l, d, f), d),
        "up": normal((n_l, d, f), d),
        "down": normal((n_l, f, d), f, resid),
        "final_norm": jnp.ones((d,), dtype),
        "lm_head": normal((d, v), d),
    }
    if config.tie_embeddings:
        del params["lm_head"]
    if config.qkv_bias:
        params |= {
            f"{t}_bias": jnp.zeros((n_l, w), dtype)
            for t, w in zip("qkv", (qd, kvd, kvd), strict=True)
        }
    if config.qk_norm:
        params |= {k: jnp.ones((n_l, config.head_dim), dtype) for k in QK_NORM_KEYS}
    return params


def head_weight(params: BaseParams) -> jax.Array:
    """The unembedding ``[d, V]``: ``lm_head``, or the transposed embedding when tied."""
    return params["lm_head"] if "lm_head" in params else params["embed"].T


def merge_lora(
    params: BaseParams, lora: dict[str, tuple[jax.Array, jax.Array]], scale: jax.Array
) -> BaseParams:
    """Base weights with one adapter folded in: ``w + scale * a @ b`` for every target in
    ``lora`` (``a [L_t, d_in, r]``, ``b [L_t, r, d_out]``; ``L_t = 1`` for ``lm_head``)."""
    merged = dict(params)
    for name, (a, b) in lora.items():
        delta = jnp.einsum("ldr,lro->ldo", a, b) * scale
        base = head_weight(params) if name == "lm_head" else params[name]
        merged[name] = base + (delta[0] if name == "lm_head" else delta).astype(base.dtype)
    return merged


def _rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    var = jnp.mean(x * x, axis=-1, keepdims=True)
    return x * jax.lax.rsqrt(var + eps) * weight.reshape((1,) * (x.ndim - 1) + weight.shape)


def _rope_tables(
    positions: jax.Array,
    head_dim: int,
    theta: float,
    dtype: jnp.dtype,
    scaling: tuple[float, float, float, float] | None = None,
) -> tuple[jax.Array, jax.Array]:
    """``cos, sin [1, T, 1, hd/2]`` of the rotary embedding at ``positions [T]``."""
    freqs = jnp.asarray(rope_frequencies(head_dim, theta, scaling), dtype)  # [hd/2]
    angles = positions.astype(dtype)[:, None] * freqs[None, :]  # [T, hd/2]
    return jnp.cos(angles)[None, :, None, :], jnp.sin(angles)[None, :, None, :]


def rope_frequencies(
    head_dim: int, theta: float, scaling: tuple[float, float, float, float] | None = None
) -> np.ndarray:
    """RoPE inverse frequencies ``theta^(-2i/hd)``, ``i < hd/2`` (float64, at trace time),
    with Llama 3's scaling when given: wavelengths longer than ``original / low_freq_factor``
    are divided by ``factor``, shorter than ``original / high_freq_factor`` kept, and those in
    between interpolated linearly in ``original / wavelength``."""
    half = head_dim // 2
    inv = theta ** (-np.arange(half, dtype=np.float64) / half)
    if scaling is None:
        return inv
    factor, low, high, original = scaling
    wavelen = 2 * np.pi / inv
    smooth = (original / wavelen - low) / (high - low)
    mid = (1 - smooth) * inv / factor + smooth * inv
    out: np.ndarray = np.where(
        wavelen > original / low, inv / factor, np.where(wavelen < original / high, inv, mid)
    )
    return out


def _apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotary embedding of ``x [B, T, H, hd]`` (rotate-half form)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


# Hand-written VJPs for the two elementwise blocks whose autodiff residuals dominate the
# backward pass's memory (and, on CPU, its page faults): each keeps only its inputs (SwiGLU)
# or its output (softmax) and recomputes the rest.


@jax.custom_vjp
def _swiglu(gate: jax.Array, up: jax.Array) -> jax.Array:
    """``silu(gate) * up``."""
    return jax.nn.silu(gate) * up


def _swiglu_fwd(gate: jax.Array, up: jax.Array) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    return _swiglu(gate, up), (gate, up)


def _swiglu_bwd(res: tuple[jax.Array, jax.Array], g: jax.Array) -> tuple[jax.Array, jax.Array]:
    gate, up = res
    sig = jax.nn.sigmoid(gate)
    silu = gate * sig
    d_gate = g * up * (sig * (1 + gate * (1 - sig)))
    return d_gate, g * silu


_swiglu.defvjp(_swiglu_fwd, _swiglu_bwd)


@jax.custom_vjp
def _masked_softmax(scores: jax.Array, visible: jax.Array) -> jax.Array:
    """Softmax over the last axis of ``scores`` where ``visible`` (bool, broadcastable), with
    masked entries exactly zero (every row must see at least one entry)."""
    masked = jnp.where(visible, scores, jnp.finfo(scores.dtype).min)  # type: ignore[no-untyped-call]
    return jax.nn.softmax(masked, axis=-1)


def _masked_softmax_fwd(scores: jax.Array, visible: jax.Array) -> tuple[jax.Array, jax.Array]:
    probs = _masked_softmax(scores, visible)
    return probs, probs


def _masked_softmax_bwd(probs: jax.Array, g: jax.Array) -> tuple[jax.Array, None]:
    # Masked entries have probability 0, hence gradient 0, as through the ``where``.
    return probs * (g - jnp.sum(g * probs, axis=-1, keepdims=True)), None


_masked_softmax.defvjp(_masked_softmax_fwd, _masked_softmax_bwd)


def _project(
    x: jax.Array,
    w: jax.Array,
    name: str,
    lora_w: dict[str, tuple[jax.Array, jax.Array]],
    lora: LoraBatch | None,
) -> jax.Array:
    if lora is not None and name in lora_w:
        a, b = lora_w[name]
        return lora_linear(x, w, a, b, lora.slot, lora.scale)
    return x @ w


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
    n_h, n_kv, hd = config.n_heads, config.kv_heads, config.head_dim
    group = n_h // n_kv
    positions = jnp.asarray(start, jnp.int32) + jnp.arange(seq, dtype=jnp.int32)  # [T]
    h = params["embed"][tokens]  # [B, T, d]
    lora_layers = (
        {k: ab for k, ab in lora.weights.items() if k != "lm_head"} if lora is not None else {}
    )
    # RoPE tables and the causal mask are shared by every layer.
    cos, sin = _rope_tables(positions, hd, config.rope_theta, h.dtype, config.rope_scaling)
    key_pos = positions if cache is None else jnp.arange(cache.k.shape[2], dtype=jnp.int32)
    visible = key_pos[None, :] <= positions[:, None]  # [T, Tk]
    new_k, new_v = (None, None) if cache is None else (cache.k, cache.v)
    keys_of_layer = layer_keys(config)

    # The layers are unrolled (a Python loop, not ``lax.scan``): with a handful of layers this
    # avoids the scan's stacked residual buffers and per-layer slicing copies.
    for layer in range(config.n_layers):
        p = {k: params[k][layer] for k in keys_of_layer}
        lw = {t: (a[layer], b[layer]) for t, (a, b) in lora_layers.items()}
        x = _rms_norm(h, p["attn_norm"], config.norm_eps)
        q = _project(x, p["q"], "q", lw, lora)
        k = _project(x, p["k"], "k", lw, lora)
        v = _project(x, p["v"], "v", lw, lora)
        if config.qkv_bias:
            q, k, v = (y + p[f"{t}_bias"][None, None, :] for y, t in ((q, "q"), (k, "k"), (v, "v")))
        q = q.reshape(bsz, seq, n_h, hd)
        k = k.reshape(bsz, seq, n_kv, hd)
        v = v.reshape(bsz, seq, n_kv, hd)
        if config.qk_norm:
            q = _rms_norm(q, p["q_norm"], config.norm_eps)
            k = _rms_norm(k, p["k_norm"], config.norm_eps)
        q = _apply_rope(q, cos, sin)
        k = _apply_rope(k, cos, sin)
        if new_k is None or new_v is None:
            keys, values = k, v
        else:
            zero = jnp.zeros((), jnp.int32)
            at = (jnp.asarray(layer, jnp.int32), zero, positions[0], zero, zero)
            new_k = jax.lax.dynamic_update_slice(new_k, k[None].astype(new_k.dtype), at)
            new_v = jax.lax.dynamic_update_slice(new_v, v[None].astype(new_v.dtype), at)
            keys, values = new_k[layer], new_v[layer]
        attn = _attention(q, keys, values, visible, group)
        h = h + _project(attn.reshape(bsz, seq, n_h * hd), p["o"], "o", lw, lora)
        x = _rms_norm(h, p["mlp_norm"], config.norm_eps)
        gate = _project(x, p["gate"], "gate", lw, lora)
        up = _project(x, p["up"], "up", lw, lora)
        h = h + _project(_swiglu(gate, up), p["down"], "down", lw, lora)
    new_cache = None if new_k is None or new_v is None else KVCache(new_k, new_v)
    x = _rms_norm(h, params["final_norm"], config.norm_eps)
    head = (
        {"lm_head": (lora.weights["lm_head"][0][0], lora.weights["lm_head"][1][0])}
        if (lora is not None and "lm_head" in lora.weights)
        else {}
    )
    logits = _project(x, head_weight(params), "lm_head", head, lora)
    return logits, new_cache


def _attention(
    q: jax.Array, keys: jax.Array, values: jax.Array, visible: jax.Array, group: int
) -> jax.Array:
    """Causal attention of ``q [B, T, H, hd]`` over ``keys/values [B, Tk, Hkv, hd]``; query
    head ``h`` reads key/value head ``h // group`` (grouped-query attention, as Hugging Face's
    ``repeat_kv``). Returns ``[B, T, H, hd]``."""
    hd = q.shape[-1]
    root = jnp.sqrt(jnp.asarray(hd, q.dtype))
    if group == 1:
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, keys) / root
        probs = _masked_softmax(scores, visible[None, None])
        return jnp.einsum("bhqk,bkhd->bqhd", probs, values)
    bsz, seq, n_h, _ = q.shape
    grouped = q.reshape(bsz, seq, n_h // group, group, hd)
    scores = jnp.einsum("bqngd,bknd->bngqk", grouped, keys) / root
    probs = _masked_softmax(scores, visible[None, None, None])
    out = jnp.einsum("bngqk,bknd->bqngd", probs, values)
    return out.reshape(bsz, seq, n_h, hd)
