"""Helpers shared by the model tests."""

from __future__ import annotations

import numpy as np

from tinkjax.models import ModelRuntime


def nonzero_b(rt: ModelRuntime, name: str, seed: int) -> None:
    """Creates ``name`` and gives it random ``b`` so every LoRA coordinate has a gradient."""
    rt.create_adapter(name, rank=4, seed=seed)
    state = rt.export_state(name, include_optimizer=False)
    rng = np.random.default_rng(seed)
    for key in state:
        if key.endswith(".b"):
            state[key] = rng.normal(scale=0.1, size=state[key].shape)
    rt.import_state(name, state, info=rt.adapter_info(name), include_optimizer=False)
