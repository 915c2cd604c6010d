"""The files of a saved checkpoint: training state (``weights/``) and PEFT adapters
(``sampler_weights/``), as safetensors."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save

__all__ = [
    "PEFT_CONFIG_FILE",
    "PEFT_FILE",
    "STATE_FILE",
    "is_peft",
    "load_peft",
    "load_state",
    "peft_files",
    "state_files",
]

STATE_FILE = "state.safetensors"
PEFT_FILE = "adapter_model.safetensors"
PEFT_CONFIG_FILE = "adapter_config.json"


def _blob(tensors: Mapping[str, np.ndarray]) -> bytes:
    return save({k: np.ascontiguousarray(v) for k, v in tensors.items()})


def state_files(state: Mapping[str, np.ndarray]) -> dict[str, bytes]:
    """The files of a ``weights/`` checkpoint holding ``state`` (from ``export_state``)."""
    return {STATE_FILE: _blob(state)}


def load_state(folder: Path) -> dict[str, np.ndarray]:
    """A ``state.safetensors`` as saved by ``save_weights`` (scalars come back 0-d)."""
    state = load_file(str(folder / STATE_FILE))
    return {k: v.reshape(()) if k == "adam.step" else v for k, v in state.items()}


def peft_files(tensors: Mapping[str, np.ndarray], config: Mapping[str, Any]) -> dict[str, bytes]:
    """The files of a PEFT ``sampler_weights/`` checkpoint."""
    return {
        PEFT_FILE: _blob(tensors),
        PEFT_CONFIG_FILE: json.dumps(config, indent=2, sort_keys=True).encode(),
    }


def is_peft(folder: Path) -> bool:
    """Whether ``folder`` holds PEFT adapter files (else a training state)."""
    return (folder / PEFT_FILE).is_file()


def load_peft(folder: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The tensors and config of a PEFT checkpoint folder."""
    config: dict[str, Any] = json.loads((folder / PEFT_CONFIG_FILE).read_text())
    return load_file(str(folder / PEFT_FILE)), config
