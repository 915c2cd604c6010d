"""Hugging Face checkpoints from a local folder: Llama, Qwen2 and Qwen3 decoders.

A folder holds ``config.json``, the weights as ``model.safetensors`` or as shards named by
``model.safetensors.index.json``, and ``tokenizer.json`` (plus, usually,
``tokenizer_config.json``). Nothing is ever downloaded.

:func:`load_hf_config` reads ``config.json`` into a :class:`ModelConfig` (refusing, with the
field named, what the decoder here does not implement); :func:`load_hf_params` reads the
weights with ``safetensors`` (memory-mapped), each device reading only its own shard of each
tensor straight into its buffer (``jax.make_array_from_callback``); :class:`HFTokenizer` wraps
the folder's ``tokenizer.json`` (the ``tokenizers`` library) behind the interface of
:class:`~tinkjax.models.ByteTokenizer`.

Hugging Face stores a linear layer's weight as ``[out, in]``; the decoder here multiplies
``x @ w`` with ``w [in, out]`` stacked over layers, so projections are transposed on load.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from tinkjax.models._config import ModelConfig
from tinkjax.models._transformer import BaseParams, layer_keys

__all__ = ["HF_ARCHITECTURES", "HFTokenizer", "hf_tensor_names", "load_hf_config", "load_hf_params"]

#: ``config.json`` ``model_type`` -> the architecture's name here.
HF_ARCHITECTURES = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}

_LAYER = "model.layers.{i}."
#: Base weight -> (Hugging Face tensor name, whether it is a transposed linear weight).
_HF_NAMES: dict[str, tuple[str, bool]] = {
    "attn_norm": (_LAYER + "input_layernorm.weight", False),
    "q": (_LAYER + "self_attn.q_proj.weight", True),
    "k": (_LAYER + "self_attn.k_proj.weight", True),
    "v": (_LAYER + "self_attn.v_proj.weight", True),
    "o": (_LAYER + "self_attn.o_proj.weight", True),
    "q_bias": (_LAYER + "self_attn.q_proj.bias", False),
    "k_bias": (_LAYER + "self_attn.k_proj.bias", False),
    "v_bias": (_LAYER + "self_attn.v_proj.bias", False),
    "q_norm": (_LAYER + "self_attn.q_norm.weight", False),
    "k_norm": (_LAYER + "self_attn.k_norm.weight", False),
    "mlp_norm": (_LAYER + "post_attention_layernorm.weight", False),
    "gate": (_LAYER + "mlp.gate_proj.weight", True),
    "up": (_LAYER + "mlp.up_proj.weight", True),
    "down": (_LAYER + "mlp.down_proj.weight", True),
    "embed": ("model.embed_tokens.weight", False),
    "final_norm": ("model.norm.weight", False),
    "lm_head": ("lm_head.weight", True),
}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path}: not found (a Hugging Face model folder needs it)") from None
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot be read as JSON ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data


def _get(cfg: Mapping[str, Any], key: str, kind: type, path: Path, default: Any = None) -> Any:
    value = cfg.get(key, default)
    if value is None:
        raise ValueError(f"{path}: {key} is missing")
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or isinstance(value, bool) is not (kind is bool):
        raise ValueError(f"{path}: {key} must be {kind.__name__}, got {value!r}")
    return value


def _rope(cfg: Mapping[str, Any], path: Path) -> tuple[float, tuple[float, ...] | None]:
    """``(rope_theta, llama3 scaling or None)``: ``rope_theta``/``rope_scaling`` at the top
    level (transformers 4) or in ``rope_parameters`` (transformers 5)."""
    params = cfg.get("rope_parameters") or {}
    theta = cfg.get("rope_theta", params.get("rope_theta", 10_000.0))
    if not isinstance(theta, int | float) or isinstance(theta, bool) or theta <= 0:
        raise ValueError(f"{path}: rope_theta must be a positive number, got {theta!r}")
    scaling = cfg.get("rope_scaling") or (params if params.get("rope_type") else None)
    if not scaling:
        return float(theta), None
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind in (None, "default"):
        return float(theta), None
    if kind != "llama3":
        raise ValueError(
            f"{path}: rope_scaling.rope_type {kind!r} is not supported (supported: 'default', "
            "'llama3')"
        )
    values = []
    for key in (
        "factor",
        "low_freq_factor",
        "high_freq_factor",
        "original_max_position_embeddings",
    ):
        v = scaling.get(key)
        if not isinstance(v, int | float) or isinstance(v, bool) or v <= 0:
            raise ValueError(f"{path}: rope_scaling.{key} must be a positive number, got {v!r}")
        values.append(float(v))
    if values[1] >= values[2]:
        raise ValueError(f"{path}: rope_scaling.low_freq_factor must be < high_freq_factor")
    return float(theta), tuple(values)


def load_hf_config(folder: str | Path, *, max_seq_len: int | None = None) -> ModelConfig:
    """The :class:`ModelConfig` of the Hugging Face model in ``folder``.

    Args:
        folder: a local folder with ``config.json``.
        max_seq_len: longest sequence served (default: ``max_position_embeddings``).

    Raises:
        ValueError: not a Llama/Qwen2/Qwen3 decoder, or a field this decoder does not
            implement (named, with its value).
    """
    root = Path(folder).expanduser().resolve()
    path = root / "config.json"
    cfg = _read_json(path)
    model_type = cfg.get("model_type")
    if model_type not in HF_ARCHITECTURES:
        raise ValueError(
            f"{path}: model_type {model_type!r} is not supported (supported: "
            f"{sorted(HF_ARCHITECTURES)})"
        )
    arch = HF_ARCHITECTURES[model_type]
    act = cfg.get("hidden_act", "silu")
    if act != "silu":
        raise ValueError(f"{path}: hidden_act {act!r} is not supported (only 'silu')")
    if cfg.get("mlp_bias"):
        raise ValueError(f"{path}: mlp_bias true is not supported")
    if arch == "llama" and cfg.get("attention_bias"):
        raise ValueError(f"{path}: attention_bias true is not supported for llama")
    if arch in ("qwen2", "qwen3") and cfg.get("use_sliding_window"):
        raise ValueError(f"{path}: use_sliding_window true is not supported")
    n_heads = _get(cfg, "num_attention_heads", int, path)
    d_model = _get(cfg, "hidden_size", int, path)
    head_dim = cfg.get("head_dim") or d_model // n_heads
    theta, scaling = _rope(cfg, path)
    positions = _get(cfg, "max_position_embeddings", int, path)
    if max_seq_len is not None and not 1 <= max_seq_len <= positions:
        raise ValueError(
            f"max_seq_len: expected 1..{positions} (max_position_embeddings), got {max_seq_len}"
        )
    try:
        return _model_config(cfg, path, arch, d_model, n_heads, head_dim, theta, scaling,
                             max_seq_len or positions, root)  # fmt: skip
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def _model_config(
    cfg: Mapping[str, Any], path: Path, arch: str, d_model: int, n_heads: int, head_dim: int,
    theta: float, scaling: tuple[float, ...] | None, max_seq_len: int, root: Path,
) -> ModelConfig:  # fmt: skip
    return ModelConfig(
        vocab_size=_get(cfg, "vocab_size", int, path),
        d_model=d_model,
        n_layers=_get(cfg, "num_hidden_layers", int, path),
        n_heads=n_heads,
        d_ff=_get(cfg, "intermediate_size", int, path),
        max_seq_len=max_seq_len,
        rope_theta=theta,
        norm_eps=_get(cfg, "rms_norm_eps", float, path, 1e-6),
        n_kv_heads=_get(cfg, "num_key_value_heads", int, path, n_heads),
        attn_head_dim=head_dim if head_dim != d_model // n_heads else 0,
        # Qwen2's q/k/v projections always have biases; Qwen3's only with attention_bias.
        qkv_bias=arch == "qwen2" or (arch == "qwen3" and bool(cfg.get("attention_bias"))),
        qk_norm=arch == "qwen3",
        tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        rope_scaling=scaling,  # type: ignore[arg-type]
        arch=arch,
        source=str(root),
    )


def hf_tensor_names(config: ModelConfig) -> dict[str, list[str]]:
    """Base weight -> the Hugging Face tensor names it is read from (one per layer)."""
    keys = [*layer_keys(config), "embed", "final_norm"]
    if not config.tie_embeddings:
        keys.append("lm_head")
    out = {}
    for key in keys:
        name = _HF_NAMES[key][0]
        count = config.n_layers if name.startswith("model.layers.") else 1
        out[key] = [name.format(i=i) for i in range(count)]
    return out


def _weight_files(root: Path) -> dict[str, Path]:
    """Tensor name -> the safetensors file holding it."""
    index = root / "model.safetensors.index.json"
    if index.exists():
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ValueError(f"{index}: weight_map must be an object")
        return {str(k): root / str(v) for k, v in weight_map.items()}
    single = root / "model.safetensors"
    if not single.exists():
        raise ValueError(
            f"{root}: no model.safetensors or model.safetensors.index.json (weights must be in "
            "the safetensors format)"
        )
    from safetensors import safe_open

    with safe_open(str(single), framework="numpy") as f:
        return dict.fromkeys(f.keys(), single)


def _expected_shape(config: ModelConfig, key: str) -> tuple[int, ...]:
    d, f, v, n_l = config.d_model, config.d_ff, config.vocab_size, config.n_layers
    qd, kvd, hd = config.q_dim, config.kv_dim, config.head_dim
    shapes: dict[str, tuple[int, ...]] = {
        "attn_norm": (n_l, d), "mlp_norm": (n_l, d),
        "q": (n_l, d, qd), "k": (n_l, d, kvd), "v": (n_l, d, kvd), "o": (n_l, qd, d),
        "q_bias": (n_l, qd), "k_bias": (n_l, kvd), "v_bias": (n_l, kvd),
        "q_norm": (n_l, hd), "k_norm": (n_l, hd),
        "gate": (n_l, d, f), "up": (n_l, d, f), "down": (n_l, f, d),
        "embed": (v, d), "final_norm": (d,), "lm_head": (d, v),
    }  # fmt: skip
    return shapes[key]


def load_hf_params(
    config: ModelConfig,
    dtype: jnp.dtype,
    shardings: Callable[[str, tuple[int, ...]], jax.sharding.Sharding] | None = None,
) -> BaseParams:
    """The base weights of ``config.source``, as ``dtype`` arrays.

    Each tensor is read memory-mapped; with ``shardings`` (base weight name and global shape
    -> its sharding), every device reads only the slice it holds.

    Raises:
        ValueError: a tensor is missing or has the wrong shape (named).
    """
    from safetensors import safe_open

    root = Path(config.source)
    files = _weight_files(root)
    np_dtype = np.dtype(jnp.dtype(dtype).name) if jnp.dtype(dtype) != jnp.bfloat16 else None
    handles: dict[Path, Any] = {}

    def tensor(name: str) -> Any:
        path = files.get(name)
        if path is None:
            raise ValueError(f"{root}: tensor {name} is missing from the checkpoint")
        if path not in handles:
            handles[path] = safe_open(str(path), framework="numpy")
        return handles[path].get_slice(name)

    def cast(x: np.ndarray) -> np.ndarray:
        return x.astype(np_dtype if np_dtype is not None else jnp.bfloat16, copy=False)

    params: BaseParams = {}
    try:
        for key, names in hf_tensor_names(config).items():
            transposed = _HF_NAMES[key][1]
            shape = _expected_shape(config, key)
            slices = [tensor(n) for n in names]
            per = shape[1:] if len(names) > 1 else shape
            for n, s in zip(names, slices, strict=True):
                got = tuple(s.get_shape())
                want = per[::-1] if transposed else per
                if got != want:
                    raise ValueError(f"{root}: tensor {n} has shape {got}, expected {want}")
            params[key] = _place(key, shape, slices, transposed, cast, shardings)
    finally:
        handles.clear()
    return params


def _place(
    key: str,
    shape: tuple[int, ...],
    slices: list[Any],
    transposed: bool,
    cast: Callable[[np.ndarray], np.ndarray],
    shardings: Callable[[str, tuple[int, ...]], jax.sharding.Sharding] | None,
) -> jax.Array:
    """One base weight built from its per-layer safetensors slices, device by device."""
    stacked = len(slices) > 1 or len(shape) == len(slices[0].get_shape()) + 1

    def read(where: tuple[slice, ...] | None) -> np.ndarray:
        index = where if where is not None else tuple(slice(None) for _ in shape)

        def one(s: Any, idx: tuple[slice, ...]) -> np.ndarray:
            arr = s[idx[::-1]] if transposed else s[idx]
            return cast(np.asarray(arr.T if transposed else arr))

        if not stacked:
            return one(slices[0], index)
        layers = range(len(slices))[index[0]]
        return np.stack([one(slices[i], index[1:]) for i in layers])

    sharding = (
        shardings(key, shape)
        if shardings is not None
        else jax.sharding.SingleDeviceSharding(jax.devices()[0])
    )
    return jax.make_array_from_callback(shape, sharding, read)


class HFTokenizer:
    """A Hugging Face ``tokenizer.json`` (the ``tokenizers`` library) with the interface of
    :class:`~tinkjax.models.ByteTokenizer`: ``encode``/``decode``/``__call__``, the special
    token ids and ``vocab_size``.

    Args:
        folder: the model folder (``tokenizer.json``; ``tokenizer_config.json`` and
            ``config.json`` name the BOS/EOS tokens when present).
    """

    def __init__(self, folder: str | Path) -> None:
        from tokenizers import Tokenizer

        root = Path(folder)
        try:
            self._tok = Tokenizer.from_file(str(root / "tokenizer.json"))
        except Exception as e:
            raise ValueError(f"{root / 'tokenizer.json'}: cannot be loaded ({e})") from None
        self.name_or_path = str(root)
        tcfg = (
            _read_json(root / "tokenizer_config.json")
            if (root / "tokenizer_config.json").exists()
            else {}
        )
        mcfg = _read_json(root / "config.json") if (root / "config.json").exists() else {}
        self.bos_token_id = self._special_id(tcfg.get("bos_token"), mcfg.get("bos_token_id"))
        self.eos_token_id = self._special_id(tcfg.get("eos_token"), mcfg.get("eos_token_id"))
        self.pad_token_id = self._special_id(tcfg.get("pad_token"), mcfg.get("pad_token_id"))
        added = self._tok.get_added_tokens_decoder()
        self.all_special_ids = sorted(i for i, t in added.items() if t.special)
        self.all_special_tokens = [added[i].content for i in self.all_special_ids]
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)

    def _special_id(self, token: Any, fallback: Any) -> int | None:
        if isinstance(token, dict):  # {"content": ..., ...} in older tokenizer configs
            token = token.get("content")
        if isinstance(token, str):
            found = self._tok.token_to_id(token)
            if found is not None:
                return int(found)
        if isinstance(fallback, list):
            fallback = fallback[0] if fallback else None
        return int(fallback) if isinstance(fallback, int) else None

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of ``text`` (special-token strings in it encode to their ids)."""
        return list(self._tok.encode(text, add_special_tokens=add_special_tokens).ids)

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """The text of ``ids``."""
        return str(self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens))

    def convert_tokens_to_ids(self, tokens: str | list[str]) -> int | list[int] | None:
        """The id of a token string (or of each), ``None`` for an unknown one."""
        if isinstance(tokens, str):
            return self._tok.token_to_id(tokens)
        return [self._tok.token_to_id(t) for t in tokens]  # type: ignore[misc]

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": self.encode(text, add_special_tokens=add_special_tokens)}

    def __len__(self) -> int:
        return int(self.vocab_size)

    def __repr__(self) -> str:
        return f"HFTokenizer(name_or_path={self.name_or_path!r}, vocab_size={self.vocab_size})"
