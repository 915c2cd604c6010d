"""Tiny random Hugging Face checkpoints (Llama, Qwen2, Qwen3) written in the HF layout, and an
independent NumPy float64 forward pass of those architectures from their published equations.

The reference reads the tensors in Hugging Face's own layout (``[out, in]`` linear weights)
and never touches tinkjax's loader, so a transposition or naming mistake in either shows.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

CORPUS = (
    "The lighthouse keeper climbed the stairs every night. The sea was calm, the wind was "
    "low, and the lamp turned slowly over the dark water. Ships passed far away. "
) * 4

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

#: Architecture -> config.json fields beyond the shared ones.
ARCH_CONFIGS: dict[str, dict[str, Any]] = {
    "llama": {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "num_key_value_heads": 2, "rope_theta": 10000.0, "tie_word_embeddings": False,
        "rope_scaling": {
            "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 32,
        },
        "attention_bias": False, "mlp_bias": False, "rms_norm_eps": 1e-5,
    },
    "qwen2": {
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
        "num_key_value_heads": 2, "rope_theta": 1_000_000.0, "tie_word_embeddings": True,
        "use_sliding_window": False, "rms_norm_eps": 1e-6,
    },
    "qwen3": {
        "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3",
        "num_key_value_heads": 2, "head_dim": 32, "rope_theta": 1_000_000.0,
        "tie_word_embeddings": False, "attention_bias": False, "rms_norm_eps": 1e-6,
    },
}  # fmt: skip


def write_tokenizer(folder: Path, vocab_size: int) -> int:
    """A byte-level BPE ``tokenizer.json`` trained on :data:`CORPUS` (with the special
    tokens), and its ``tokenizer_config.json``; returns its vocabulary size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([CORPUS], trainer)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "bos_token": None,
                "eos_token": "<|endoftext|>",
                "pad_token": "<|endoftext|>",
                "model_max_length": 128,
            }
        )
    )
    return int(tok.get_vocab_size(with_added_tokens=True))


def hf_tensors(cfg: dict[str, Any], seed: int) -> dict[str, np.ndarray]:
    """Random weights of ``cfg`` under their Hugging Face names (float32, ``[out, in]``)."""
    rng = np.random.default_rng(seed)
    d, f, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    h, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim") or d // h

    def w(*shape: int, scale: float | None = None) -> np.ndarray:
        s = (shape[-1] ** -0.5) if scale is None else scale
        return (rng.normal(size=shape) * s).astype(np.float32)

    def norm(n: int) -> np.ndarray:
        return (1.0 + 0.2 * rng.normal(size=n)).astype(np.float32)

    out = {"model.embed_tokens.weight": w(v, d, scale=1.0), "model.norm.weight": norm(d)}
    if not cfg["tie_word_embeddings"]:
        out["lm_head.weight"] = w(v, d)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        out |= {
            p + "input_layernorm.weight": norm(d),
            p + "post_attention_layernorm.weight": norm(d),
            p + "self_attn.q_proj.weight": w(h * hd, d),
            p + "self_attn.k_proj.weight": w(kv * hd, d),
            p + "self_attn.v_proj.weight": w(kv * hd, d),
            p + "self_attn.o_proj.weight": w(d, h * hd),
            p + "mlp.gate_proj.weight": w(f, d),
            p + "mlp.up_proj.weight": w(f, d),
            p + "mlp.down_proj.weight": w(d, f),
        }
        if cfg["model_type"] == "qwen2":
            out |= {
                p + "self_attn.q_proj.bias": w(h * hd, scale=0.1),
                p + "self_attn.k_proj.bias": w(kv * hd, scale=0.1),
                p + "self_attn.v_proj.bias": w(kv * hd, scale=0.1),
            }
        if cfg["model_type"] == "qwen3":
            out |= {
                p + "self_attn.q_norm.weight": norm(hd),
                p + "self_attn.k_norm.weight": norm(hd),
            }
    return out


def write_checkpoint(folder: Path, arch: str, *, seed: int = 0, shards: int = 1) -> Path:
    """A tiny random ``arch`` checkpoint in ``folder`` (2 layers, hidden size 64; weights in
    ``shards`` safetensors files, with an index when more than one)."""
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    vocab = write_tokenizer(folder, 300)
    cfg: dict[str, Any] = {
        "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
        "num_attention_heads": 4, "vocab_size": vocab, "max_position_embeddings": 128,
        "hidden_act": "silu", "eos_token_id": 0,  # the trainer adds SPECIALS first
        "torch_dtype": "float32", **ARCH_CONFIGS[arch],
    }  # fmt: skip
    (folder / "config.json").write_text(json.dumps(cfg, indent=1))
    tensors = hf_tensors(cfg, seed)
    names = sorted(tensors)
    if shards == 1:
        save_file(tensors, str(folder / "model.safetensors"))
    else:
        weight_map = {}
        for s in range(shards):
            file = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
            part = {n: tensors[n] for n in names[s::shards]}
            save_file(part, str(folder / file))
            weight_map |= dict.fromkeys(part, file)
        (folder / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {}, "weight_map": weight_map})
        )
    return folder


# ---------------------------------------------------------------------- NumPy reference


def _rms(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def _inv_freq(cfg: dict[str, Any], hd: int) -> np.ndarray:
    inv = 1.0 / cfg["rope_theta"] ** (np.arange(0, hd, 2, dtype=np.float64) / hd)
    sc = cfg.get("rope_scaling")
    if not sc:
        return inv
    # Llama 3.1's published rule, per frequency.
    out = np.empty_like(inv)
    low_wl = sc["original_max_position_embeddings"] / sc["low_freq_factor"]
    high_wl = sc["original_max_position_embeddings"] / sc["high_freq_factor"]
    for i, fr in enumerate(inv):
        wl = 2 * np.pi / fr
        if wl < high_wl:
            out[i] = fr
        elif wl > low_wl:
            out[i] = fr / sc["factor"]
        else:
            t = (sc["original_max_position_embeddings"] / wl - sc["low_freq_factor"]) / (
                sc["high_freq_factor"] - sc["low_freq_factor"]
            )
            out[i] = (1 - t) * fr / sc["factor"] + t * fr
    return out


def _rope(x: np.ndarray, pos: np.ndarray, inv: np.ndarray) -> np.ndarray:
    """Rotate-half RoPE of ``x [T, H, hd]``."""
    ang = pos[:, None] * inv[None, :]  # [T, hd/2]
    emb = np.concatenate([ang, ang], axis=-1)[:, None, :]
    cos, sin = np.cos(emb), np.sin(emb)
    half = x.shape[-1] // 2
    rot = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rot * sin


def reference_logprobs(folder: Path, tokens: list[int], targets: list[int]) -> np.ndarray:
    """``log p(targets[t] | tokens[:t+1])`` of the checkpoint in ``folder``, in float64."""
    from safetensors.numpy import load_file

    cfg = json.loads((folder / "config.json").read_text())
    t64: dict[str, np.ndarray] = {}
    for file in folder.glob("*.safetensors"):
        t64 |= {k: v.astype(np.float64) for k, v in load_file(str(file)).items()}
    d, h, kv = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim") or d // h
    eps = cfg["rms_norm_eps"]
    inv = _inv_freq(cfg, hd)
    seq = len(tokens)
    pos = np.arange(seq, dtype=np.float64)
    x = t64["model.embed_tokens.weight"][tokens]
    mask = np.tril(np.ones((seq, seq), bool))
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}.self_attn."
        a = _rms(x, t64[f"model.layers.{i}.input_layernorm.weight"], eps)
        proj = {}
        for n in "qkv":
            y = a @ t64[p + f"{n}_proj.weight"].T
            if p + f"{n}_proj.bias" in t64:
                y = y + t64[p + f"{n}_proj.bias"]
            proj[n] = y.reshape(seq, -1, hd)
        q, k, v = proj["q"], proj["k"], proj["v"]
        if p + "q_norm.weight" in t64:
            q = _rms(q, t64[p + "q_norm.weight"], eps)
            k = _rms(k, t64[p + "k_norm.weight"], eps)
        q, k = _rope(q, pos, inv), _rope(k, pos, inv)
        k, v = np.repeat(k, h // kv, axis=1), np.repeat(v, h // kv, axis=1)
        scores = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(hd)
        scores = np.where(mask[None], scores, -np.inf)
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        att = np.einsum("hqk,khd->qhd", probs, v).reshape(seq, h * hd)
        x = x + att @ t64[p + "o_proj.weight"].T
        m = _rms(x, t64[f"model.layers.{i}.post_attention_layernorm.weight"], eps)
        mp = f"model.layers.{i}.mlp."
        gate, up = m @ t64[mp + "gate_proj.weight"].T, m @ t64[mp + "up_proj.weight"].T
        x = x + (gate / (1 + np.exp(-gate)) * up) @ t64[mp + "down_proj.weight"].T
    x = _rms(x, t64["model.norm.weight"], eps)
    head = t64.get("lm_head.weight", t64["model.embed_tokens.weight"])
    logits = x @ head.T
    logits -= logits.max(-1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    return logp[np.arange(seq), targets]
