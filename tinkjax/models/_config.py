"""Model configurations and the built-in presets (byte-level decoders with seeded weights)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

__all__ = ["DEFAULT_MODEL", "PRESETS", "ModelConfig", "get_model_config"]


@dataclass(frozen=True)
class ModelConfig:
    """Shape and initialisation of a decoder-only transformer.

    The architecture is the Llama family's: token embedding, ``n_layers`` pre-norm blocks
    (RMSNorm, causal attention with RoPE, RMSNorm, SwiGLU MLP), a final RMSNorm and the
    ``lm_head``. The byte presets use plain multi-head attention and an untied ``lm_head``; a
    Hugging Face checkpoint (:func:`tinkjax.models.load_hf_config`) may add grouped-query
    attention (``n_kv_heads``), an explicit ``head_dim``, biases on the q/k/v projections
    (Qwen2), RMSNorm of each query and key head (Qwen3), tied embeddings and Llama 3 RoPE
    scaling.

    Attributes:
        vocab_size: number of token ids (256 bytes + specials for the byte tokenizer).
        d_model: residual width; must be divisible by ``n_heads``.
        n_layers: transformer blocks.
        n_heads: attention heads.
        d_ff: SwiGLU hidden width.
        max_seq_len: longest accepted sequence (prompt + generated tokens when sampling).
        rope_theta: RoPE base.
        norm_eps: RMSNorm epsilon.
        seed: seed of the deterministic base weights (presets only).
        n_kv_heads: key/value heads (grouped-query attention); 0: ``n_heads``.
        attn_head_dim: width of one head; 0: ``d_model // n_heads``.
        qkv_bias: the q/k/v projections have biases (Qwen2).
        qk_norm: RMSNorm over each query and key head before RoPE (Qwen3).
        tie_embeddings: the unembedding is the transposed token embedding (no ``lm_head``
            weight of its own).
        rope_scaling: Llama 3 RoPE scaling ``(factor, low_freq_factor, high_freq_factor,
            original_max_position_embeddings)``, or ``None``.
        arch: ``"bytelm"`` (the seeded presets), ``"llama"``, ``"qwen2"`` or ``"qwen3"``.
        source: the local Hugging Face folder the weights are read from (``""``: seeded).
    """

    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    d_ff: int
    max_seq_len: int
    rope_theta: float = 10_000.0
    norm_eps: float = 1e-5
    seed: int = 0
    n_kv_heads: int = 0
    attn_head_dim: int = 0
    qkv_bias: bool = False
    qk_norm: bool = False
    tie_embeddings: bool = False
    rope_scaling: tuple[float, float, float, float] | None = None
    arch: str = "bytelm"
    source: str = ""

    def __post_init__(self) -> None:
        if self.attn_head_dim == 0 and self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head dimension must be even for RoPE, got {self.head_dim}")
        if self.n_heads % self.kv_heads:
            raise ValueError(
                f"n_heads {self.n_heads} is not a multiple of n_kv_heads {self.kv_heads}"
            )

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.attn_head_dim or self.d_model // self.n_heads

    @property
    def kv_heads(self) -> int:
        """Key/value heads (``n_heads`` without grouped-query attention)."""
        return self.n_kv_heads or self.n_heads

    @property
    def q_dim(self) -> int:
        """Output width of the query projection (``n_heads * head_dim``)."""
        return self.n_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        """Output width of the key and value projections (``kv_heads * head_dim``)."""
        return self.kv_heads * self.head_dim

    @property
    def n_params(self) -> int:
        """Base parameters (embedding, layers, norms, and the head unless tied)."""
        d, f, n_l, v = self.d_model, self.d_ff, self.n_layers, self.vocab_size
        attn = d * self.q_dim * 2 + d * self.kv_dim * 2
        bias = (self.q_dim + 2 * self.kv_dim) if self.qkv_bias else 0
        norms = 2 * d + (2 * self.head_dim if self.qk_norm else 0)
        layer = attn + bias + 3 * d * f + norms
        return v * d * (1 if self.tie_embeddings else 2) + n_l * layer + d


DEFAULT_MODEL = "tinkjax/bytelm-1m"

PRESETS: Mapping[str, ModelConfig] = MappingProxyType(
    {
        # ~0.92M parameters: 4 x (4 d^2 + 3 d d_ff) + 2 x 260 d.
        DEFAULT_MODEL: ModelConfig(
            vocab_size=260, d_model=128, n_layers=4, n_heads=4, d_ff=384, max_seq_len=1024, seed=0
        ),
        # For tests: compiles in well under a second.
        "tinkjax/bytelm-micro": ModelConfig(
            vocab_size=260, d_model=32, n_layers=2, n_heads=2, d_ff=64, max_seq_len=256, seed=1
        ),
    }
)


def get_model_config(base_model: str) -> ModelConfig:
    """The preset named ``base_model``; ``ValueError`` listing the presets otherwise."""
    try:
        return PRESETS[base_model]
    except KeyError:
        known = ", ".join(sorted(PRESETS))
        raise ValueError(f"base_model: unknown model {base_model!r}; available: {known}") from None
