"""Array-level request and result types of the model runtime (no wire types here).

The HTTP layer decodes wire Structs into these frozen dataclasses of NumPy arrays and encodes
the results back; the runtime's jitted cores see only arrays.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import jax
import numpy as np

from tinkjax.losses import LossGraph
from tinkjax.models._config import ModelConfig

__all__ = [
    "ADAM_KEYS",
    "LORA_ALPHA",
    "MAX_LEARNING_RATE",
    "MIN_EPS",
    "AdamHyper",
    "AdapterInfo",
    "AdapterSnapshot",
    "DatumArrays",
    "FwdBwdItem",
    "FwdBwdResult",
    "NonFiniteResultError",
    "SampleJob",
    "SampleOutput",
    "SampledArrays",
    "UnknownAdapterError",
    "ValidDatum",
]

LORA_ALPHA = 32.0
"""Tinker's LoRA alpha: every adapter's update is scaled by ``LORA_ALPHA / rank``."""


class NonFiniteResultError(ArithmeticError):
    """A computation's result would not be finite, so it was not committed (the message names
    what and says that nothing changed)."""


class UnknownAdapterError(KeyError):
    """No adapter with this id is loaded in the runtime."""

    def __init__(self, adapter_id: str) -> None:
        super().__init__(adapter_id)
        self.adapter_id = adapter_id

    def __str__(self) -> str:
        return f"unknown adapter {self.adapter_id!r}: create or load it first"


@dataclass(frozen=True)
class AdapterInfo:
    """How an adapter was created: Tinker's ``LoraConfig`` with the seed actually used."""

    rank: int
    seed: int
    train_attn: bool = True
    train_mlp: bool = True
    train_unembed: bool = True


@dataclass(frozen=True, eq=False)
class AdapterSnapshot:
    """An immutable copy of an adapter's LoRA weights, for sampling.

    Attributes:
        base_model: the preset the weights belong to.
        info: rank, seed and flags.
        weights: target name (``q``, ``k``, ``v``, ``o``, ``gate``, ``up``, ``down``,
            ``lm_head``) -> ``(a [L_t, d_in, r], b [L_t, r, d_out])`` for the trained targets
            only (``L_t`` = n_layers, or 1 for ``lm_head``).
        scale: ``alpha / rank``.
    """

    base_model: str
    info: AdapterInfo
    weights: Mapping[str, tuple[jax.Array, jax.Array]]
    scale: float


@dataclass(frozen=True)
class DatumArrays:
    """One training datum.

    Attributes:
        input_tokens: ``[N]`` int token ids; position ``i`` predicts ``target_tokens[i]``.
        loss_fn_inputs: wire key -> array; ``target_tokens`` is ``[N]`` or ``[N, K]`` int and
            every other input has the same shape.
    """

    input_tokens: np.ndarray
    loss_fn_inputs: Mapping[str, np.ndarray]


@dataclass(frozen=True)
class ValidDatum:
    """A checked datum: ``tokens [N]`` int32, ``targets [N, K]`` int32, ``inputs`` wire key ->
    ``[N, K]`` float, and whether the targets were 1-D (``K`` squeezed on output)."""

    tokens: np.ndarray
    targets: np.ndarray
    inputs: dict[str, np.ndarray]
    one_dim: bool


@dataclass(frozen=True)
class FwdBwdItem:
    """The datums of one ``forward``/``forward_backward`` request for one adapter."""

    adapter_id: str
    datums: Sequence[DatumArrays | ValidDatum]
    loss_fn: str
    loss_fn_config: Mapping[str, float] = field(default_factory=dict)
    custom_loss: LossGraph | None = None
    """With ``loss_fn="custom"``: the server-side custom loss (datums checked for it with
    ``validate_custom_datum``)."""


@dataclass(frozen=True)
class FwdBwdResult:
    """Per-datum outputs (``logprobs``, ``elementwise_loss``: float32, shape of
    ``target_tokens``) and metrics (``loss:sum``) of one item; or, when ``refused`` says why
    (a non-finite output, loss or gradient), neither, and the item changed nothing."""

    outputs: list[dict[str, np.ndarray]]
    metrics: dict[str, float]
    refused: str | None = None


#: The largest ``learning_rate`` accepted: Adam moves every weight by about the learning rate
#: per step, so anything larger throws a LoRA adapter far outside any useful range.
MAX_LEARNING_RATE = 1.0
#: The smallest ``eps`` accepted: ``eps`` guards Adam's division where a gradient is exactly
#: zero (every padded rank is), and a smaller value is zero in float32 arithmetic (0/0 = NaN).
MIN_EPS = 1e-30


@dataclass(frozen=True)
class AdamHyper:
    """Tinker's ``AdamParams`` (AdamW with decoupled weight decay; ``grad_clip_norm=0``: off).

    Accepted: every value finite and ``>= 0``; ``beta1``, ``beta2 < 1``;
    ``eps >= MIN_EPS``; ``learning_rate <= MAX_LEARNING_RATE``; and
    ``learning_rate * weight_decay <= 1`` (decoupled decay multiplies the weights by
    ``1 - learning_rate * weight_decay`` each step: beyond 1 it flips and grows them).
    """

    learning_rate: float = 1e-4
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-12
    weight_decay: float = 0.0
    grad_clip_norm: float = 0.0

    def __post_init__(self) -> None:
        """Checked once, here: a constructed ``AdamHyper`` is trusted by ``optim_step``.

        Raises:
            ValueError: naming ``adam_params.<field>`` and the value (see the class doc).
        """
        for key, value in self.as_dict().items():
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or value < 0
            ):
                raise ValueError(f"adam_params.{key}: expected a finite number >= 0, got {value!r}")
        for key in ("beta1", "beta2"):
            if getattr(self, key) >= 1:
                raise ValueError(f"adam_params.{key}: expected < 1, got {getattr(self, key)}")
        if self.eps < MIN_EPS:
            raise ValueError(f"adam_params.eps: expected >= {MIN_EPS:g}, got {self.eps!r}")
        if self.learning_rate > MAX_LEARNING_RATE:
            raise ValueError(
                f"adam_params.learning_rate: expected <= {MAX_LEARNING_RATE:g}, "
                f"got {self.learning_rate!r}"
            )
        if self.learning_rate * self.weight_decay > 1:
            raise ValueError(
                f"adam_params.weight_decay: {self.weight_decay!r} with learning_rate "
                f"{self.learning_rate!r} decays the weights by a factor "
                f"{self.learning_rate * self.weight_decay:g} > 1 per step (their product must "
                "be <= 1)"
            )

    def as_dict(self) -> dict[str, float]:
        """``{name: value}`` in :data:`ADAM_KEYS` order."""
        return {key: getattr(self, key) for key in ADAM_KEYS}


#: The hyper-parameter names of :class:`AdamHyper` (Tinker's ``AdamParams`` fields), declared
#: once by the dataclass.
ADAM_KEYS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(AdamHyper))


@dataclass(frozen=True)
class SampleJob:
    """One sampling request.

    Attributes:
        snapshot: adapter weights, or ``None`` for the base model.
        prompt: ``[P]`` int, ``P >= 1``.
        num_samples: independent completions.
        max_tokens: generated tokens at most (``P + max_tokens <= max_seq_len``).
        temperature: 0 means greedy.
        top_k: ``<= 0`` means no limit.
        top_p: in ``(0, 1]``.
        seed: ``None`` draws a fresh seed.
        stop_token_seqs: stop when the generated tokens end with one of these (the caller
            encodes stop strings to bytes and adds EOS when Tinker's default stop applies).
        include_prompt_logprobs: also return ``log p(prompt[i] | prompt[:i])``.
        topk_prompt_logprobs: also return, at every prompt position, the ``k`` most likely
            tokens and their logprobs (``0``: none).
        row_offset: index of the first sample within a larger request sampled in pieces
            (sample ``i`` here is sample ``row_offset + i`` there: same seed, same tokens).
        checked_for: the model config a caller has already validated the job against (the
            server does, at its edge, naming the wire fields); the runtime then trusts it
            instead of checking it again. ``None`` (direct use): the runtime checks it.
    """

    snapshot: AdapterSnapshot | None
    prompt: np.ndarray
    num_samples: int = 1
    max_tokens: int = 16
    temperature: float = 1.0
    top_k: int = -1
    top_p: float = 1.0
    seed: int | None = None
    stop_token_seqs: Sequence[Sequence[int]] = ()
    include_prompt_logprobs: bool = False
    topk_prompt_logprobs: int = 0
    row_offset: int = 0
    checked_for: ModelConfig | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class SampledArrays:
    """One completion: ``tokens`` int32 ``[n]`` (stop tokens included), ``logprobs`` float32
    ``[n]`` under the raw model distribution, and why it ended."""

    tokens: np.ndarray
    logprobs: np.ndarray
    stop_reason: Literal["stop", "length"]


@dataclass(frozen=True)
class SampleOutput:
    """Completions in request order, ``[P]`` float32 prompt logprobs (NaN at 0) if asked, and
    the prompt's top-k ``(ids [P, k] int32, logprobs [P, k] float32)`` if asked: row ``i`` ranks
    ``log p(. | prompt[:i])`` in decreasing order; row 0 (no context) holds id 0, logprob
    ``-99999.0``."""

    sequences: list[SampledArrays]
    prompt_logprobs: np.ndarray | None
    prompt_topk: tuple[np.ndarray, np.ndarray] | None = None
