"""Model configurations and the built-in presets (byte-level decoders with seeded weights)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

__all__ = ["DEFAULT_MODEL", "PRESETS", "ModelConfig", "get_model_config"]


@dataclass(frozen=True)
class ModelConfig:
    """Shape and initialisation of a decoder-only transformer.

    The architecture is fixed: token embedding, ``n_layers`` pre-norm blocks (RMSNorm, causal
    multi-head attention with RoPE, RMSNorm, SwiGLU MLP), a final RMSNorm and an *untied*
    ``lm_head`` (so LoRA on the unembedding, ``train_unembed``, has its own matrix).

    Attributes:
        vocab_size: number of token ids (256 bytes + specials for the byte tokenizer).
        d_model: residual width; must be divisible by ``n_heads``.
        n_layers: transformer blocks.
        n_heads: attention heads.
        d_ff: SwiGLU hidden width.
        max_seq_len: longest accepted sequence (prompt + generated tokens when sampling).
        rope_theta: RoPE base.
        norm_eps: RMSNorm epsilon.
        seed: seed of the deterministic base weights.
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

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        if (self.d_model // self.n_heads) % 2:
            raise ValueError("head dimension must be even for RoPE")

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.d_model // self.n_heads


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
