"""LoRA targets, their initialisation, and the PEFT (Hugging Face) tensor layout.

A target's update is ``x @ a @ b * (alpha / rank)`` with ``a [d_in, r]`` drawn from a
Kaiming-uniform distribution (PEFT's default, bound ``1/sqrt(d_in)``) and ``b [r, d_out]``
zero, so a fresh adapter leaves the base model unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from tinkjax.models._config import ModelConfig
from tinkjax.models._types import LORA_ALPHA, AdapterInfo

__all__ = [
    "TARGETS",
    "LoraTarget",
    "init_lora_weights",
    "parse_peft",
    "peft_config",
    "peft_tensors",
    "seed_key_data",
    "target_shape",
    "trained_targets",
]


@dataclass(frozen=True)
class LoraTarget:
    """One LoRA-adaptable matrix: its group (Tinker's ``train_*`` flag) and PEFT module."""

    name: str
    group: Literal["attn", "mlp", "unembed"]
    peft_module: str  # relative to ``base_model.model``; ``{i}`` is the layer


TARGETS: Mapping[str, LoraTarget] = MappingProxyType(
    {
        t.name: t
        for t in (
            LoraTarget("q", "attn", "layers.{i}.self_attn.q_proj"),
            LoraTarget("k", "attn", "layers.{i}.self_attn.k_proj"),
            LoraTarget("v", "attn", "layers.{i}.self_attn.v_proj"),
            LoraTarget("o", "attn", "layers.{i}.self_attn.o_proj"),
            LoraTarget("gate", "mlp", "layers.{i}.mlp.gate_proj"),
            LoraTarget("up", "mlp", "layers.{i}.mlp.up_proj"),
            LoraTarget("down", "mlp", "layers.{i}.mlp.down_proj"),
            LoraTarget("lm_head", "unembed", "lm_head"),
        )
    }
)


def target_shape(config: ModelConfig, name: str) -> tuple[int, int, int]:
    """``(L_t, d_in, d_out)`` of target ``name`` (``L_t`` = 1 for ``lm_head``)."""
    d, f, qd, kvd = config.d_model, config.d_ff, config.q_dim, config.kv_dim
    dims = {
        "q": (d, qd), "k": (d, kvd), "v": (d, kvd), "o": (qd, d),
        "gate": (d, f), "up": (d, f), "down": (f, d), "lm_head": (d, config.vocab_size),
    }  # fmt: skip
    n_layers = 1 if name == "lm_head" else config.n_layers
    return (n_layers, *dims[name])


def trained_targets(info: AdapterInfo) -> tuple[str, ...]:
    """Targets an adapter trains, in ``TARGETS`` order."""
    groups = {"attn": info.train_attn, "mlp": info.train_mlp, "unembed": info.train_unembed}
    return tuple(name for name, t in TARGETS.items() if groups[t.group])


def seed_key_data(seed: int) -> np.ndarray:
    """The threefry key data of ``jax.random.key(seed)`` (without x64: the low 32 bits), as
    an array :func:`init_lora_weights` takes traced."""
    return np.array([0, seed & 0xFFFFFFFF], np.uint32)


def init_lora_weights(
    config: ModelConfig, info: AdapterInfo, dtype: jnp.dtype, key_data: jax.Array | None = None
) -> dict[str, tuple[jax.Array, jax.Array]]:
    """Fresh ``(a [L_t, d_in, r], b [L_t, r, d_out])`` of every trained target, from
    ``info.seed`` (same seed, same ``a``), or from ``key_data`` (:func:`seed_key_data`) when
    given: then the seed is a traced argument and one compiled initialisation serves every
    seed (``info.seed`` is ignored)."""
    root = jax.random.key(info.seed) if key_data is None else jax.random.wrap_key_data(key_data)
    out = {}
    for index, name in enumerate(TARGETS):
        if name not in trained_targets(info):
            continue
        n_l, d_in, d_out = target_shape(config, name)
        bound = d_in**-0.5
        a = jax.random.uniform(
            jax.random.fold_in(root, index), (n_l, d_in, info.rank), jnp.float32, -bound, bound
        )
        out[name] = (a.astype(dtype), jnp.zeros((n_l, info.rank, d_out), dtype))
    return out


def _peft_prefix(name: str, layer: int) -> str:
    return "base_model.model." + TARGETS[name].peft_module.format(i=layer)


def peft_tensors(
    weights: Mapping[str, tuple[jax.Array, jax.Array]],
) -> dict[str, np.ndarray]:
    """PEFT tensors: ``…{module}.lora_A.weight [r, d_in]`` and ``…lora_B.weight [d_out, r]``
    (float32), e.g. ``base_model.model.layers.0.self_attn.q_proj.lora_A.weight``."""
    out: dict[str, np.ndarray] = {}
    for name, (a, b) in weights.items():
        a_np, b_np = np.asarray(a, np.float32), np.asarray(b, np.float32)
        for layer in range(a_np.shape[0]):
            prefix = _peft_prefix(name, layer)
            out[prefix + ".lora_A.weight"] = np.ascontiguousarray(a_np[layer].T)
            out[prefix + ".lora_B.weight"] = np.ascontiguousarray(b_np[layer].T)
    return out


def peft_config(base_model: str, info: AdapterInfo) -> dict[str, Any]:
    """The ``adapter_config.json`` of an adapter."""
    modules = sorted({TARGETS[t].peft_module.rsplit(".", 1)[-1] for t in trained_targets(info)})
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": info.rank,
        "lora_alpha": LORA_ALPHA,
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "target_modules": modules,
    }


def parse_peft(
    config: ModelConfig,
    tensors: Mapping[str, np.ndarray],
    peft_cfg: Mapping[str, Any],
    dtype: jnp.dtype,
) -> tuple[dict[str, tuple[jax.Array, jax.Array]], int, float]:
    """Inverse of ``peft_tensors``: ``(weights, rank, scale)``.

    Raises:
        ValueError: a missing layer, a wrong shape, an unknown tensor name, or a bad config.
    """
    rank = peft_cfg.get("r")
    if not isinstance(rank, int) or rank < 1:
        raise ValueError(f"adapter_config.r must be a positive int, got {rank!r}")
    alpha = float(peft_cfg.get("lora_alpha", LORA_ALPHA))
    remaining = dict(tensors)
    weights: dict[str, tuple[jax.Array, jax.Array]] = {}
    for name in TARGETS:
        n_l, d_in, d_out = target_shape(config, name)
        first = _peft_prefix(name, 0) + ".lora_A.weight"
        if first not in remaining:
            continue
        a_layers, b_layers = [], []
        for layer in range(n_l):
            prefix = _peft_prefix(name, layer)
            for suffix, shape in (
                (".lora_A.weight", (rank, d_in)),
                (".lora_B.weight", (d_out, rank)),
            ):
                if prefix + suffix not in remaining:
                    raise ValueError(f"PEFT tensors: missing {prefix + suffix}")
                got = np.shape(remaining[prefix + suffix])
                if got != shape:
                    raise ValueError(
                        f"PEFT tensors: {prefix + suffix} has shape {got}, expected {shape}"
                    )
            a_layers.append(np.asarray(remaining.pop(prefix + ".lora_A.weight")).T)
            b_layers.append(np.asarray(remaining.pop(prefix + ".lora_B.weight")).T)
        weights[name] = (
            jnp.asarray(np.stack(a_layers), dtype),
            jnp.asarray(np.stack(b_layers), dtype),
        )
    if remaining:
        raise ValueError(f"PEFT tensors: unexpected names {sorted(remaining)[:5]}")
    if not weights:
        raise ValueError("PEFT tensors: no LoRA weights found")
    return weights, rank, alpha / rank
