"""Sharding the base model over a device mesh (JAX's SPMD partitioner, nothing home-made).

A mesh has three axes: ``data`` (rows of a batch), ``fsdp`` (rows of a batch *and* one
dimension of every frozen base weight, FSDP/ZeRO-3 style: XLA gathers a weight where a layer
needs it) and ``tp`` (tensor parallel: the output dimension of q/k/v/gate/up and the input
dimension of o/down, Megatron style). :func:`make_mesh` builds one over the local devices
(default: every device on ``fsdp``); :func:`base_params_of` places (or, for a Hugging Face
folder, reads) each weight straight into its shards; :func:`shard_rows` splits a packed batch
over ``data`` x ``fsdp``. Small tensors (norms, biases, the LoRA adapters and their optimizer
states) stay replicated. A dimension a mesh axis does not divide is left unsharded on that
axis, so any mesh serves any model.

Multi-host (a TPU pod slice): call ``jax.distributed.initialize()`` in every process before
the server starts; ``jax.devices()`` then lists every host's devices and the same mesh spans
them (each process reads only its own devices' shards of the checkpoint).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from tinkjax.models._config import ModelConfig
from tinkjax.models._transformer import BaseParams

__all__ = ["AXES", "base_params_of", "make_mesh", "parse_mesh", "shard_rows", "weight_spec"]

AXES = ("data", "fsdp", "tp")
_BATCH = ("data", "fsdp")

#: Base weight -> the mesh axis of each dimension (before dropping axes that do not divide).
_SPECS: dict[str, tuple[Any, ...]] = {
    "q": (None, "fsdp", "tp"), "k": (None, "fsdp", "tp"), "v": (None, "fsdp", "tp"),
    "gate": (None, "fsdp", "tp"), "up": (None, "fsdp", "tp"),
    "o": (None, "tp", "fsdp"), "down": (None, "tp", "fsdp"),
    "q_bias": (None, "tp"), "k_bias": (None, "tp"), "v_bias": (None, "tp"),
    "embed": ("tp", "fsdp"), "lm_head": ("fsdp", "tp"),
}  # fmt: skip


def make_mesh(
    data: int | None = None, fsdp: int | None = None, tp: int = 1, devices: Any = None
) -> Mesh:
    """A ``(data, fsdp, tp)`` mesh over ``devices`` (default: every device ``jax.devices()``
    lists). An axis left ``None`` takes what the others leave (``fsdp`` first).

    Raises:
        ValueError: the axis sizes do not multiply to the device count.
    """
    devs = list(jax.devices() if devices is None else devices)
    n = len(devs)
    for name, size in (("data", data), ("fsdp", fsdp), ("tp", tp)):
        if size is not None and (not isinstance(size, int) or size < 1):
            raise ValueError(f"mesh.{name}: expected a positive int, got {size!r}")
    known = math.prod(s for s in (data, fsdp, tp) if s is not None)
    if n % known:
        raise ValueError(f"mesh: axis sizes {data}, {fsdp}, {tp} do not divide {n} devices")
    if fsdp is None:
        fsdp = n // known
    if data is None:
        data = n // (fsdp * tp)
    if data * fsdp * tp != n:
        raise ValueError(
            f"mesh: data={data} x fsdp={fsdp} x tp={tp} is not the {n} devices available"
        )
    return Mesh(np.array(devs).reshape(data, fsdp, tp), AXES)


def parse_mesh(text: str) -> Mesh:
    """A mesh from ``"data=2,fsdp=4,tp=1"`` (any subset; see :func:`make_mesh`)."""
    sizes: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = part.partition("=")
        if name not in AXES or not value.isdigit():
            raise ValueError(
                f"mesh: expected comma-separated AXIS=N with AXIS in {AXES}, got {part!r}"
            )
        sizes[name] = int(value)
    return make_mesh(sizes.get("data"), sizes.get("fsdp"), sizes.get("tp", 1))


def weight_spec(mesh: Mesh, key: str, shape: tuple[int, ...]) -> PartitionSpec:
    """The partition of base weight ``key`` of ``shape`` on ``mesh``: its rule, with every
    axis that does not divide its dimension (or has size 1) dropped."""
    rule = _SPECS.get(key, (None,) * len(shape))
    axes = [
        a if a is not None and mesh.shape[a] > 1 and dim % mesh.shape[a] == 0 else None
        for a, dim in zip(rule, shape, strict=True)
    ]
    return PartitionSpec(*axes)  # type: ignore[no-untyped-call]


def base_params_of(config: ModelConfig, dtype: jnp.dtype, mesh: Mesh | None) -> BaseParams:
    """The base weights of ``config`` (read from its Hugging Face folder, or seeded), placed
    on ``mesh`` (``None``: the default device)."""
    if config.source:
        from tinkjax.models._hf import load_hf_params

        if mesh is None:
            return load_hf_params(config, dtype)
        return load_hf_params(
            config, dtype, lambda key, shape: NamedSharding(mesh, weight_spec(mesh, key, shape))
        )
    from tinkjax.models._compiled import init_base_jit

    params: BaseParams = init_base_jit(config, dtype)
    if mesh is None:
        return params
    return {
        k: jax.device_put(v, NamedSharding(mesh, weight_spec(mesh, k, v.shape)))
        for k, v in params.items()
    }


def shard_rows(arrays: Mapping[str, Any], mesh: Mesh, lead: tuple[int, ...]) -> dict[str, Any]:
    """``arrays`` placed on ``mesh``: each array whose shape starts with ``lead`` (a packed
    call's ``(chunks, rows per chunk)``) split over the mesh's batch axes (``data`` x ``fsdp``)
    along its rows when they divide them; the rest replicated."""
    size = mesh.shape["data"] * mesh.shape["fsdp"]
    spec = PartitionSpec(None, _BATCH)  # type: ignore[no-untyped-call]
    by_row = NamedSharding(mesh, spec) if size > 1 and lead[-1] % size == 0 else None
    replicated = NamedSharding(mesh, PartitionSpec())  # type: ignore[no-untyped-call]

    def place(x: Any) -> Any:
        if isinstance(x, np.ndarray | jax.Array):
            if isinstance(x, jax.Array) and isinstance(x.sharding, NamedSharding):
                return x
            rows = by_row is not None and tuple(x.shape[: len(lead)]) == tuple(lead)
            return jax.device_put(x, by_row if rows else replicated)
        return x

    return {k: jax.tree.map(place, v) for k, v in arrays.items()}
