"""Adapter state of ``ModelRuntime``: snapshots, training-state export/import, PEFT layout."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from tinkjax.models._adapters import (
    TARGETS,
    parse_peft,
    peft_config,
    peft_tensors,
    target_shape,
    trained_targets,
)
from tinkjax.models._config import ModelConfig
from tinkjax.models._programs import LoraStack
from tinkjax.models._types import LORA_ALPHA, AdapterInfo, AdapterSnapshot


class StateMixin:
    """The state methods of :class:`~tinkjax.models.ModelRuntime` (which supplies the rest)."""

    if TYPE_CHECKING:
        config: ModelConfig
        base_model: str
        dtype: np.dtype[Any]
        _stack: LoraStack
        _slots: dict[str, int]
        _infos: dict[str, AdapterInfo]
        _opt: dict[str, optax.OptState]

        def _slot(self, adapter_id: str) -> int: ...
        def _check_info(self, info: AdapterInfo) -> None: ...
        def adapter_info(self, adapter_id: str) -> AdapterInfo: ...
        def remove_adapter(self, adapter_id: str) -> None: ...
        def _install(
            self,
            adapter_id: str,
            info: AdapterInfo,
            weights: Mapping[str, tuple[jax.Array, jax.Array]],
            moments: tuple[int, LoraStack, LoraStack] | None,
        ) -> None: ...

    # ----------------------------------------------------------------- state

    def _slice(self, tree: LoraStack, adapter_id: str) -> dict[str, tuple[jax.Array, jax.Array]]:
        """Trained targets of one adapter at its own rank: ``(a [L_t, d_in, r], b)``."""
        slot, info = self._slot(adapter_id), self._infos[adapter_id]
        r = info.rank
        return {
            t: (tree[t][0][slot, ..., :r], tree[t][1][slot, :, :r, :])
            for t in trained_targets(info)
        }

    def _flat(
        self, prefix: str, weights: Mapping[str, tuple[jax.Array, jax.Array]], adapter_id: str
    ) -> dict[str, np.ndarray]:
        del adapter_id
        out = {}
        for t, (a, b) in weights.items():
            out[f"{prefix}.{t}.a"] = np.asarray(a)
            out[f"{prefix}.{t}.b"] = np.asarray(b)
        return out

    def snapshot(self, adapter_id: str) -> AdapterSnapshot:
        """An immutable copy of the adapter's current LoRA weights (for sampling later)."""
        info = self.adapter_info(adapter_id)
        return AdapterSnapshot(
            base_model=self.base_model, info=info,
            weights=self._slice(self._stack, adapter_id), scale=LORA_ALPHA / info.rank,
        )  # fmt: skip

    def export_state(self, adapter_id: str, *, include_optimizer: bool) -> dict[str, np.ndarray]:
        """Flat training state: ``lora.{target}.a [L_t, d_in, r]`` / ``.b [L_t, r, d_out]`` for
        the trained targets and, with ``include_optimizer``, ``adam.mu.*``, ``adam.nu.*`` (same
        names and shapes) and ``adam.step`` (int64 scalar). Pending gradients are not included.
        """
        out = self._flat("lora", self._slice(self._stack, adapter_id), adapter_id)
        if include_optimizer:
            adam = self._opt[adapter_id][0]
            info, r = self._infos[adapter_id], self._infos[adapter_id].rank
            for name, tree in (("mu", adam.mu), ("nu", adam.nu)):
                for t in trained_targets(info):
                    a, b = tree[t]
                    out[f"adam.{name}.{t}.a"] = np.asarray(a[..., :r])
                    out[f"adam.{name}.{t}.b"] = np.asarray(b[:, :r, :])
            out["adam.step"] = np.asarray(adam.count, np.int64)
        return out

    def import_state(
        self,
        adapter_id: str,
        state: Mapping[str, np.ndarray],
        *,
        info: AdapterInfo,
        include_optimizer: bool,
    ) -> None:
        """Loads ``export_state`` output into ``adapter_id`` (replacing it if loaded).

        Without ``include_optimizer`` the optimizer starts fresh (``adam.*`` entries are
        ignored). Pending gradients are cleared.

        Raises:
            ValueError: a missing, unexpected or wrongly shaped entry, or a bad ``info``.
        """
        self._check_info(info)
        targets = trained_targets(info)
        shapes: dict[str, tuple[int, ...]] = {}
        for t in targets:
            n_l, d_in, d_out = target_shape(self.config, t)
            shapes[f"lora.{t}.a"] = (n_l, d_in, info.rank)
            shapes[f"lora.{t}.b"] = (n_l, info.rank, d_out)
        if include_optimizer:
            shapes.update(
                {f"adam.{m}.{n[5:]}": s for m in ("mu", "nu") for n, s in list(shapes.items())}
            )
            shapes["adam.step"] = ()
        given = set(state) if include_optimizer else {k for k in state if not k.startswith("adam.")}
        missing, unexpected = sorted(set(shapes) - given), sorted(given - set(shapes))
        if missing or unexpected:
            raise ValueError(f"state: missing entries {missing}, unexpected entries {unexpected}")
        for name, shape in shapes.items():
            if np.shape(state[name]) != shape:
                raise ValueError(
                    f"state[{name!r}]: shape {np.shape(state[name])}, expected {shape}"
                )

        def pair(prefix: str) -> dict[str, tuple[jax.Array, jax.Array]]:
            return {
                t: (jnp.asarray(state[f"{prefix}.{t}.a"], self.dtype),
                    jnp.asarray(state[f"{prefix}.{t}.b"], self.dtype))
                for t in targets
            }  # fmt: skip

        moments = None
        if include_optimizer:
            step = int(state["adam.step"])
            if step < 0:
                raise ValueError(f"state['adam.step']: expected >= 0, got {step}")
            moments = (step, pair("adam.mu"), pair("adam.nu"))
        if adapter_id in self._slots:
            self.remove_adapter(adapter_id)
        self._install(adapter_id, info, pair("lora"), moments)

    def export_peft(
        self, adapter: str | AdapterSnapshot
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """PEFT-layout tensors and ``adapter_config.json`` of an adapter or snapshot.

        Tensor names are ``base_model.model.layers.{i}.self_attn.{q,k,v,o}_proj``,
        ``…layers.{i}.mlp.{gate,up,down}_proj`` and ``base_model.model.lm_head``, each with
        ``.lora_A.weight [r, d_in]`` and ``.lora_B.weight [d_out, r]`` (float32).
        """
        snap = self.snapshot(adapter) if isinstance(adapter, str) else adapter
        return peft_tensors(snap.weights), peft_config(snap.base_model, snap.info)

    def snapshot_from_peft(
        self, tensors: Mapping[str, np.ndarray], config: Mapping[str, Any]
    ) -> AdapterSnapshot:
        """A snapshot from saved sampler weights (``export_peft`` output).

        Raises:
            ValueError: the weights belong to another base model or are malformed.
        """
        base = config.get("base_model_name_or_path", self.base_model)
        if base != self.base_model:
            raise ValueError(
                f"adapter_config.base_model_name_or_path: {base!r} does not match {self.base_model!r}"
            )
        weights, rank, scale = parse_peft(self.config, tensors, config, self.dtype)
        groups = {TARGETS[t].group for t in weights}
        info = AdapterInfo(
            rank=rank, seed=int(config.get("seed", 0)), train_attn="attn" in groups,
            train_mlp="mlp" in groups, train_unembed="unembed" in groups,
        )  # fmt: skip
        return AdapterSnapshot(base_model=self.base_model, info=info, weights=weights, scale=scale)
