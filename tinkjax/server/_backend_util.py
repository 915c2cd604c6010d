"""Records, limits and request-checking helpers shared by the backend's parts."""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from tinkjax.server._errors import ApiError
from tinkjax.types import ForwardBackwardOutput, TensorData

if TYPE_CHECKING:
    from tinkjax.models import AdapterSnapshot

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "MAX_NUM_SAMPLES",
    "PEFT_CONFIG_FILE",
    "PEFT_FILE",
    "STATE_FILE",
    "ModelRecord",
    "SamplerRecord",
]

#: ``max_tokens`` used when a sample request leaves it unset (capped by the context length).
DEFAULT_MAX_TOKENS = 64
#: Most samples one request may ask for.
MAX_NUM_SAMPLES = 1024
STATE_FILE = "state.safetensors"
PEFT_FILE = "adapter_model.safetensors"
PEFT_CONFIG_FILE = "adapter_config.json"
_ADAM_KEYS = ("learning_rate", "beta1", "beta2", "eps", "weight_decay", "grad_clip_norm")


@dataclass
class ModelRecord:
    """A training model (LoRA adapter) as the server knows it."""

    model_id: str
    base_model: str
    rank: int
    seed: int | None
    train_attn: bool
    train_mlp: bool
    train_unembed: bool
    session_id: str | None
    user_metadata: dict[str, Any] | None = None


@dataclass
class SamplerRecord:
    """A sampling session: the base model, a frozen snapshot, or saved sampler weights."""

    sampler_id: str
    base_model: str
    model_path: str | None = None
    snapshot: AdapterSnapshot | None = None


def _new_request_id() -> str:
    return uuid.uuid4().hex


def _check_int(value: Any, field: str, *, low: int | None = None, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(400, f"{field}: expected an integer, got {value!r}", field=field)
    if (low is not None and value < low) or (high is not None and value > high):
        raise ApiError(400, f"{field}: {value} outside [{low}, {high}]", field=field)
    return value


def _check_float(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ApiError(400, f"{field}: expected a finite number, got {value!r}", field=field)
    return float(value)


def _stop_sequences(stop: Any, vocab: int, eos: int) -> list[list[int]]:
    """Tinker's ``stop``: ``None`` → end-of-text; str / [str] → their UTF-8 bytes; [int] →
    single-token stops; ``[]`` → none."""
    if stop is None:
        return [[eos]]
    if isinstance(stop, str):
        stop = [stop]
    out: list[list[int]] = []
    for i, s in enumerate(stop):
        field = f"sampling_params.stop[{i}]"
        if isinstance(s, str):
            if not s:
                raise ApiError(400, f"{field}: empty stop string", field=field)
            out.append(list(s.encode("utf-8")))
        elif isinstance(s, int) and not isinstance(s, bool):
            if not 0 <= s < vocab:
                raise ApiError(400, f"{field}: token {s} outside [0, {vocab})", field=field)
            out.append([s])
        else:
            raise ApiError(400, f"{field}: expected a string or token id, got {s!r}", field=field)
    return out


def _fwdbwd_output(result: Any) -> ForwardBackwardOutput:
    return ForwardBackwardOutput(
        loss_fn_output_type="ArrayRecord",
        loss_fn_outputs=[
            {name: TensorData.from_numpy(arr) for name, arr in outputs.items()}
            for outputs in result.outputs
        ],
        metrics=dict(result.metrics),
    )


def _load_state(folder: Any) -> dict[str, np.ndarray]:
    """A ``state.safetensors`` as saved by ``save_weights`` (scalars come back 0-d)."""
    from safetensors.numpy import load_file

    state = load_file(str(folder / STATE_FILE))
    return {k: v.reshape(()) if k == "adam.step" else v for k, v in state.items()}


def _warmup() -> None:
    """Import the model stack on the worker thread while the server starts answering, and
    turn on JAX's persistent compilation cache (``$TINKJAX_JAX_CACHE``, default
    ``~/.cache/tinkjax/jax``; ``off`` disables it) so a restarted server does not recompile
    the programs of the shapes it has seen."""
    from tinkjax._jaxcfg import enable_compilation_cache

    enable_compilation_cache()
    import tinkjax.models  # noqa: F401
