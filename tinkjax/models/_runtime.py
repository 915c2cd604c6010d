"""``ModelRuntime``: one base model, many LoRA adapters, and the operations a Tinker server needs.

State lives on the device: the adapter stack (every slot's LoRA weights, zero-padded to a
shared rank ``R``), the gradient accumulator of the same shape, and one optax AdamW state per
adapter. Every numeric operation is one call into a module-level jitted program (so runtimes
with the same model share compiled programs); host code only validates, packs and unpacks.

Metrics: ``forward_backward`` reports ``loss:sum`` per item; ``optim_step`` reports
``grad_norm:mean`` (global norm of the accumulated gradient, before clipping),
``learning_rate:mean`` and ``step:max`` (the adapter's optimizer step count after the update).
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
import optax

from tinkjax.losses import LOSS_SUM_METRIC, get_loss_definition, resolve_loss_config
from tinkjax.models._adapters import (
    TARGETS,
    init_lora_weights,
    parse_peft,
    peft_config,
    peft_tensors,
    target_shape,
    trained_targets,
)
from tinkjax.models._batching import (
    MAX_TOKENS_PER_BATCH,
    ValidDatum,
    bucket_length,
    bucket_pow2,
    bucket_rows,
    pack_rows,
    validate_datum,
)
from tinkjax.models._config import ModelConfig, get_model_config
from tinkjax.models._programs import (
    LoraStack,
    forward_backward_core,
    forward_core,
    optim_core,
    sample_core,
    zero_slot_core,
)
from tinkjax.models._tokenizer import ByteTokenizer
from tinkjax.models._transformer import init_base_params
from tinkjax.models._types import (
    LORA_ALPHA,
    AdamHyper,
    AdapterInfo,
    AdapterSnapshot,
    FwdBwdItem,
    FwdBwdResult,
    SampledArrays,
    SampleJob,
    SampleOutput,
    UnknownAdapterError,
)

__all__ = ["ModelRuntime", "trace_counts"]

_TRACES: Counter[str] = Counter()
_F = TypeVar("_F", bound=Callable[..., Any])


def _counted(name: str, fn: _F) -> _F:
    """``fn`` that bumps ``trace_counts()[name]`` each time JAX traces it.

    ``functools.wraps`` keeps ``fn``'s signature visible to ``jax.jit``, which needs it to map
    ``donate_argnames`` and ``static_argnames`` onto positional arguments (without it, an
    argument passed by position is silently not donated and XLA copies it).
    """

    @functools.wraps(fn)
    def traced(*args: Any, **kwargs: Any) -> Any:
        global _TRIM_PENDING
        _TRACES[name] += 1
        _TRIM_PENDING = True
        return fn(*args, **kwargs)

    return traced  # type: ignore[return-value]


_TRIM_PENDING = False
_MALLOC_TRIM: Callable[[int], int] | None = None
if sys.platform.startswith("linux"):
    try:
        _MALLOC_TRIM = ctypes.CDLL(None).malloc_trim  # glibc only
    except (OSError, AttributeError):
        _MALLOC_TRIM = None


def _release_compile_memory() -> None:
    """Hands the heap memory freed after a trace and compile back to the OS.

    Compiling a program allocates a few hundred MB that glibc keeps for reuse after it is
    freed; the resident size of a process that compiled its handful of programs would stay
    that much larger for good. ``malloc_trim`` releases the free pages (it does not move live
    memory). Only called after a call that traced something, so steady-state steps never pay
    for it.
    """
    global _TRIM_PENDING
    if _TRIM_PENDING:
        _TRIM_PENDING = False
        if _MALLOC_TRIM is not None:
            _MALLOC_TRIM(0)


def trace_counts() -> dict[str, int]:
    """How many times each jitted program of the runtime has been traced in this process."""
    return dict(_TRACES)


_forward_jit = jax.jit(_counted("forward", forward_core), static_argnames=("config", "loss_name"))
_forward_backward_jit = jax.jit(
    _counted("forward_backward", forward_backward_core),
    static_argnames=("config", "loss_name"),
    donate_argnames=("acc",),
)
_optim_jit = jax.jit(_counted("optim_step", optim_core), donate_argnames=("stack", "opt_state"))
_zero_slot_jit = jax.jit(_counted("zero_slot", zero_slot_core), donate_argnames=("acc",))
_sample_jit = jax.jit(
    _counted("sample", sample_core), static_argnames=("config", "n_rows", "gen_len")
)
_init_base_jit = jax.jit(_counted("init_base", init_base_params), static_argnums=(0, 1))
_init_lora_jit = jax.jit(_counted("init_lora", init_lora_weights), static_argnums=(0, 1, 2))
_HYPER_KEYS = ("learning_rate", "beta1", "beta2", "eps", "weight_decay", "grad_clip_norm")


def _pad_rank(tree: LoraStack, rank: int) -> LoraStack:
    """Zero-pads ``a [..., d_in, r]`` / ``b [..., r, d_out]`` to rank ``rank``."""

    def pad(x: jax.Array, axis: int) -> jax.Array:
        widths = [(0, 0)] * x.ndim
        widths[axis] = (0, rank - x.shape[axis])
        return jnp.pad(x, widths)

    return {t: (pad(a, a.ndim - 1), pad(b, b.ndim - 2)) for t, (a, b) in tree.items()}


def _install_core(
    stack: LoraStack, acc: LoraStack, slot: jax.Array, weights: LoraStack
) -> tuple[LoraStack, LoraStack, optax.OptState]:
    """Writes one adapter's weights (rank ``r``, trained targets only) into ``slot`` of the
    stack (padded to rank ``R``; other targets zero), zeroes its gradient, and returns a
    fresh AdamW state of the slot's shape. ``stack`` and ``acc`` are donated."""
    rank = next(iter(stack.values()))[0].shape[-1]
    padded = _pad_rank(weights, rank)
    put = jax.lax.dynamic_update_index_in_dim
    new_stack, new_acc, params = {}, {}, {}
    for t, (a, b) in stack.items():
        pa, pb = padded.get(t, (jnp.zeros_like(a[0]), jnp.zeros_like(b[0])))
        new_stack[t] = (put(a, pa.astype(a.dtype), slot, 0), put(b, pb.astype(b.dtype), slot, 0))
        new_acc[t] = (put(acc[t][0], jnp.zeros_like(a[0]), slot, 0),
                      put(acc[t][1], jnp.zeros_like(b[0]), slot, 0))  # fmt: skip
        params[t] = (pa, pb)
    return new_stack, new_acc, optax.adamw(1e-4).init(params)


_install_jit = jax.jit(_counted("install", _install_core), donate_argnames=("stack", "acc"))


def _fresh_seed() -> int:
    return int.from_bytes(os.urandom(4), "little")


def _prng_key(seed: int) -> jax.Array:
    if not 0 <= seed < 2**64:
        raise ValueError(f"seed: {seed} outside [0, 2**64)")
    return jax.random.fold_in(jax.random.key(seed & 0xFFFFFFFF), seed >> 32)


class ModelRuntime:
    """One base model (a preset from ``PRESETS``) and any number of LoRA adapters.

    Args:
        base_model: preset name, e.g. ``"tinkjax/bytelm-1m"``.
        dtype: parameter and activation dtype (``jnp.float64`` needs x64 enabled).
        max_lora_rank: the largest rank ``create_adapter`` accepts.
        adapter_slots: initial capacity of the adapter stack (it doubles when full; each
            growth recompiles the programs once).
    """

    def __init__(
        self,
        base_model: str,
        *,
        dtype: jnp.dtype = jnp.float32,
        max_lora_rank: int = 64,
        adapter_slots: int = 8,
    ) -> None:
        self.config: ModelConfig = get_model_config(base_model)
        self.base_model = base_model
        self.tokenizer = ByteTokenizer()
        self.dtype = jnp.dtype(dtype)
        if self.dtype == jnp.float64 and not jax.config.jax_enable_x64:  # type: ignore[attr-defined]
            raise ValueError("dtype: float64 needs x64 (use `with jax.enable_x64(True):`)")
        self.max_lora_rank = max_lora_rank
        if adapter_slots < 1:
            raise ValueError(f"adapter_slots: expected >= 1, got {adapter_slots}")
        self._initial_slots = adapter_slots
        self._np_dtype = np.dtype(self.dtype.name)
        self._base = _init_base_jit(self.config, self.dtype)
        _release_compile_memory()
        self._rank = 0  # R, the stack's padded rank (0: no stack yet)
        self._stack: LoraStack = {}
        self._acc: LoraStack = {}
        self._scale = np.zeros((0,), self._np_dtype)  # [S] alpha / rank per slot
        self._slots: dict[str, int] = {}
        self._infos: dict[str, AdapterInfo] = {}
        self._opt: dict[str, optax.OptState] = {}

    @property
    def base_params(self) -> dict[str, jax.Array]:
        """The frozen base weights (a copy of the dict; arrays are immutable)."""
        return dict(self._base)

    # ----------------------------------------------------------------- adapters

    def create_adapter(
        self,
        adapter_id: str,
        *,
        rank: int,
        seed: int | None,
        train_attn: bool = True,
        train_mlp: bool = True,
        train_unembed: bool = True,
    ) -> None:
        """Adds a fresh adapter (``a`` random from ``seed``, ``b`` zero; ``seed=None``: random).

        Raises:
            ValueError: duplicate id, bad rank, or no target trained.
        """
        if adapter_id in self._slots:
            raise ValueError(f"adapter_id: {adapter_id!r} already exists")
        info = AdapterInfo(
            rank=rank, seed=_fresh_seed() if seed is None else seed,
            train_attn=train_attn, train_mlp=train_mlp, train_unembed=train_unembed,
        )  # fmt: skip
        self._check_info(info)
        self._install(adapter_id, info, _init_lora_jit(self.config, info, self.dtype), None)

    def has_adapter(self, adapter_id: str) -> bool:
        """Whether ``adapter_id`` is loaded."""
        return adapter_id in self._slots

    def remove_adapter(self, adapter_id: str) -> None:
        """Drops an adapter and frees its slot (``_install`` overwrites a slot entirely, and
        no batch reads a free slot, so nothing needs clearing)."""
        slot = self._slot(adapter_id)
        self._scale[slot] = 0.0
        del self._slots[adapter_id], self._infos[adapter_id], self._opt[adapter_id]

    def adapter_info(self, adapter_id: str) -> AdapterInfo:
        """Rank, seed and flags of an adapter."""
        self._slot(adapter_id)
        return self._infos[adapter_id]

    def adapter_ids(self) -> list[str]:
        """Loaded adapters, in creation order."""
        return list(self._slots)

    def _slot(self, adapter_id: str) -> int:
        try:
            return self._slots[adapter_id]
        except KeyError:
            raise UnknownAdapterError(adapter_id) from None

    def _check_info(self, info: AdapterInfo) -> None:
        if not isinstance(info.rank, int) or not 1 <= info.rank <= self.max_lora_rank:
            raise ValueError(f"rank: {info.rank!r} outside [1, {self.max_lora_rank}]")
        if not trained_targets(info):
            raise ValueError("train_attn, train_mlp, train_unembed: at least one must be true")

    def _grow(self, rank: int) -> None:
        """Makes room for one more slot of rank ``rank`` (doubling S, raising R)."""
        new_rank = max(self._rank, min(bucket_pow2(rank), self.max_lora_rank), rank)
        if not self._stack:
            self._rank = new_rank
            for t in TARGETS:
                n_l, d_in, d_out = target_shape(self.config, t)
                n_s = self._initial_slots
                a = jnp.zeros((n_s, n_l, d_in, new_rank), self.dtype)
                self._stack[t] = (a, jnp.zeros((n_s, n_l, new_rank, d_out), self.dtype))
            self._acc = {
                t: (jnp.zeros_like(a), jnp.zeros_like(b)) for t, (a, b) in self._stack.items()
            }
            self._scale = np.zeros((self._initial_slots,), self._np_dtype)
            return
        if new_rank > self._rank:
            self._rank = new_rank
            self._stack = _pad_rank(self._stack, new_rank)
            self._acc = _pad_rank(self._acc, new_rank)
            for aid, state in self._opt.items():
                adam = state[0]
                self._opt[aid] = (
                    adam._replace(mu=_pad_rank(adam.mu, new_rank), nu=_pad_rank(adam.nu, new_rank)),
                    *state[1:],
                )
        n_slots = self._scale.shape[0]
        if len(self._slots) == n_slots:

            def double(x: jax.Array) -> jax.Array:
                return jnp.concatenate([x, jnp.zeros_like(x)], axis=0)

            self._stack = {t: (double(a), double(b)) for t, (a, b) in self._stack.items()}
            self._acc = {t: (double(a), double(b)) for t, (a, b) in self._acc.items()}
            self._scale = np.concatenate([self._scale, np.zeros_like(self._scale)])

    def _install(
        self,
        adapter_id: str,
        info: AdapterInfo,
        weights: Mapping[str, tuple[jax.Array, jax.Array]],
        moments: tuple[int, LoraStack, LoraStack] | None,
    ) -> None:
        """Writes ``weights`` (trained targets, rank ``info.rank``) into a free slot."""
        self._grow(info.rank)
        used = set(self._slots.values())
        slot = next(s for s in range(self._scale.shape[0]) if s not in used)
        self._stack, self._acc, fresh = _install_jit(
            self._stack, self._acc, np.int32(slot), dict(weights)
        )
        self._scale[slot] = LORA_ALPHA / info.rank
        self._slots[adapter_id] = slot
        self._infos[adapter_id] = info
        if moments is not None:
            count, mu, nu = moments
            adam = fresh[0]
            fresh = (
                adam._replace(
                    count=jnp.asarray(count, adam.count.dtype),
                    mu={**adam.mu, **_pad_rank(dict(mu), self._rank)},
                    nu={**adam.nu, **_pad_rank(dict(nu), self._rank)},
                ),
                *fresh[1:],
            )
        self._opt[adapter_id] = fresh
        _release_compile_memory()

    # ----------------------------------------------------------------- training

    def forward_backward(
        self, items: Sequence[FwdBwdItem], *, forward_only: bool
    ) -> list[FwdBwdResult]:
        """Per-datum logprobs and losses of every item; unless ``forward_only``, each item's
        loss gradient is added to its adapter's accumulator (until ``optim_step``).

        Items may target different adapters and losses: rows with the same loss share one
        compiled call (mixed adapters via per-row slots). Everything is validated before any
        computation, so a bad item changes no state.

        Raises:
            UnknownAdapterError: an item names an unloaded adapter.
            ValueError: unknown loss or config key, missing input, bad token or shape.
        """
        groups: dict[str, list[tuple[ValidDatum, int, Mapping[str, float], int, int]]] = {}
        for i, item in enumerate(items):
            slot = self._slot(item.adapter_id)
            config = self._resolve_config(item.loss_fn, item.loss_fn_config, f"items[{i}]")
            for j, datum in enumerate(item.datums):
                valid = validate_datum(
                    datum, where=f"items[{i}].datums[{j}]", loss_fn=item.loss_fn,
                    vocab=self.config.vocab_size, max_len=self.config.max_seq_len,
                    dtype=self._np_dtype,
                )  # fmt: skip
                groups.setdefault(item.loss_fn, []).append((valid, slot, config, i, j))
        outputs: list[list[dict[str, np.ndarray]]] = [[{} for _ in item.datums] for item in items]
        # loss:sum is summed from the runtime-precision losses (the outputs are float32 on the
        # wire), so a float64 runtime reports a float64-exact metric.
        totals = [0.0] * len(items)
        for loss_fn, rows in groups.items():
            length = bucket_length(max(r[0].tokens.shape[0] for r in rows))
            width = bucket_pow2(max(r[0].targets.shape[1] for r in rows))
            fit = MAX_TOKENS_PER_BATCH // (length * width)
            per_call = 1 << (max(fit, 1).bit_length() - 1)
            for start in range(0, len(rows), per_call):
                chunk = rows[start : start + per_call]
                lp, el = self._run_batch(loss_fn, chunk, length, width, forward_only)
                for r, (row, _, _, i, j) in enumerate(chunk):
                    n, kk = row.targets.shape
                    shape = (n,) if row.one_dim else (n, kk)
                    outputs[i][j] = {
                        "logprobs": lp[r, :n, :kk].reshape(shape).astype(np.float32),
                        "elementwise_loss": el[r, :n, :kk].reshape(shape).astype(np.float32),
                    }
                    totals[i] += float(np.sum(el[r, :n, :kk], dtype=np.float64))
        return [
            FwdBwdResult(outputs=outputs[i], metrics={LOSS_SUM_METRIC: totals[i]})
            for i in range(len(items))
        ]

    def _resolve_config(
        self, loss_fn: str, config: Mapping[str, float] | None, where: str
    ) -> dict[str, float]:
        get_loss_definition(loss_fn)
        resolved = resolve_loss_config(loss_fn, config)
        out = {}
        for key, value in resolved.items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(
                    f"{where}.loss_fn_config[{key!r}]: expected a number, got {value!r}"
                )
            out[key] = float(value)
        return out

    def _run_batch(
        self,
        loss_fn: str,
        rows: Sequence[tuple[ValidDatum, int, Mapping[str, float], int, int]],
        length: int,
        width: int,
        forward_only: bool,
    ) -> tuple[np.ndarray, np.ndarray]:
        definition = get_loss_definition(loss_fn)
        packed = pack_rows(
            [(d, slot, cfg) for d, slot, cfg, _, _ in rows],
            slot_scale=self._scale,
            input_keys=tuple(definition.input_arguments),
            config_keys=tuple(sorted(rows[0][2])),
            length=length,
            width=width,
            dtype=self._np_dtype,
        )
        args = dict(
            base=self._base, stack=self._stack, batch_slots=packed.batch_slots,
            scale=packed.scale, row_slot=packed.row_slot, tokens=packed.tokens,
            targets=packed.targets, valid=packed.valid, inputs=packed.inputs,
            loss_config=packed.loss_config,
        )  # fmt: skip
        if forward_only:
            lp, el = _forward_jit(config=self.config, loss_name=loss_fn, **args)
        else:
            self._acc, lp, el = _forward_backward_jit(
                config=self.config, loss_name=loss_fn, acc=self._acc, **args
            )
        out = np.asarray(lp), np.asarray(el)
        _release_compile_memory()
        return out

    def optim_step(self, adapter_id: str, params: AdamHyper) -> dict[str, float]:
        """One AdamW step of ``adapter_id`` on its accumulated gradient, then zeroes it.

        Returns:
            ``{"grad_norm:mean", "learning_rate:mean", "step:max"}``.
        """
        slot = self._slot(adapter_id)
        hyper = {}
        for key in _HYPER_KEYS:
            value = getattr(params, key)
            if not np.isfinite(value) or value < 0:
                raise ValueError(f"adam_params.{key}: expected a finite value >= 0, got {value!r}")
            hyper[key] = np.asarray(value, self._np_dtype)
        if not params.beta1 < 1 or not params.beta2 < 1:
            raise ValueError(f"adam_params: betas must be < 1, got {params.beta1}, {params.beta2}")
        self._stack, self._opt[adapter_id], stats = _optim_jit(
            self._stack, self._acc, self._opt[adapter_id], np.int32(slot), hyper
        )
        self._acc = _zero_slot_jit(self._acc, np.int32(slot))
        grad_norm, step = float(stats["grad_norm"]), float(stats["step"])
        _release_compile_memory()
        return {
            "grad_norm:mean": grad_norm,
            "learning_rate:mean": float(params.learning_rate),
            "step:max": step,
        }

    def accumulated_gradients(self, adapter_id: str) -> dict[str, np.ndarray]:
        """The pending gradient of an adapter (names as in ``export_state``)."""
        return self._flat("lora", self._slice(self._acc, adapter_id), adapter_id)

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

    # ----------------------------------------------------------------- sampling

    def sample(self, request: SampleJob) -> SampleOutput:
        """Samples ``num_samples`` completions of one prompt (prefill once, shared KV cache).

        Each sampled token's logprob is ``log_softmax(logits)[token]`` under the raw model
        (temperature 1, unfiltered), so it is comparable with training logprobs. A completion
        that ends with one of ``stop_token_seqs`` keeps the stop tokens and has stop reason
        ``"stop"``; otherwise it has ``max_tokens`` tokens and reason ``"length"``. Same seed,
        same tokens; the samples of one request differ (each row has its own key).

        Raises:
            ValueError: bad prompt tokens, lengths or sampling parameters.
        """
        prompt, n_prompt = self._check_sample(request)
        snap = request.snapshot
        p_pad = bucket_length(n_prompt)
        gen_len = max(16, bucket_pow2(request.max_tokens))
        padded = np.zeros((p_pad,), np.int32)
        padded[:n_prompt] = prompt
        stops = [list(s) for s in request.stop_token_seqs]
        width = bucket_pow2(max((len(s) for s in stops), default=1))
        stop_arr = np.full((bucket_pow2(len(stops)), width), -2, np.int32)
        stop_lens = np.zeros((stop_arr.shape[0],), np.int32)
        for i, s in enumerate(stops):
            stop_arr[i, width - len(s) :] = s
            stop_lens[i] = len(s)
        seed = _fresh_seed() if request.seed is None else request.seed
        tokens, logprobs, lengths, stopped, prompt_lp = _sample_jit(
            config=self.config,
            n_rows=bucket_rows(request.num_samples),
            gen_len=gen_len,
            base=self._base,
            lora=None if snap is None else dict(snap.weights),
            scale=np.asarray([1.0 if snap is None else snap.scale], self._np_dtype),
            prompt=padded,
            prompt_len=np.int32(n_prompt),
            max_tokens=np.int32(request.max_tokens),
            temperature=np.asarray(request.temperature, self._np_dtype),
            top_k=np.int32(request.top_k),
            top_p=np.asarray(request.top_p, self._np_dtype),
            key=_prng_key(seed),
            stops=stop_arr,
            stop_lens=stop_lens,
        )
        tokens, logprobs = np.asarray(tokens), np.asarray(logprobs, np.float32)
        lengths, stopped = np.asarray(lengths), np.asarray(stopped)
        sequences = [
            SampledArrays(
                tokens=tokens[i, : lengths[i]].copy(),
                logprobs=logprobs[i, : lengths[i]].copy(),
                stop_reason="stop" if stopped[i] else "length",
            )
            for i in range(request.num_samples)
        ]
        prompt_logprobs = None
        if request.include_prompt_logprobs:
            prompt_logprobs = np.full((n_prompt,), np.nan, np.float32)
            prompt_logprobs[1:] = np.asarray(prompt_lp, np.float32)[: n_prompt - 1]
        _release_compile_memory()
        return SampleOutput(sequences=sequences, prompt_logprobs=prompt_logprobs)

    def _check_sample(self, request: SampleJob) -> tuple[np.ndarray, int]:
        vocab, max_len = self.config.vocab_size, self.config.max_seq_len
        prompt = np.asarray(request.prompt)
        if prompt.ndim != 1 or prompt.shape[0] == 0 or prompt.dtype.kind not in "iu":
            raise ValueError(
                f"prompt: expected a non-empty 1-D int array, got {prompt.shape} {prompt.dtype}"
            )
        bad = (prompt < 0) | (prompt >= vocab)
        if bad.any():
            raise ValueError(f"prompt: token {int(prompt[bad][0])} outside [0, {vocab})")
        n_prompt = prompt.shape[0]
        if request.num_samples < 1:
            raise ValueError(f"num_samples: expected >= 1, got {request.num_samples}")
        if request.max_tokens < 0 or n_prompt + request.max_tokens > max_len:
            raise ValueError(
                f"max_tokens: {request.max_tokens} with a {n_prompt}-token prompt exceeds "
                f"max_seq_len {max_len} (or is negative)"
            )
        if not (np.isfinite(request.temperature) and request.temperature >= 0):
            raise ValueError(
                f"temperature: expected a finite value >= 0, got {request.temperature}"
            )
        if not 0 < request.top_p <= 1:
            raise ValueError(f"top_p: expected a value in (0, 1], got {request.top_p}")
        for i, seq in enumerate(request.stop_token_seqs):
            arr = np.asarray(seq)
            if arr.ndim != 1 or arr.shape[0] == 0 or ((arr < 0) | (arr >= vocab)).any():
                raise ValueError(
                    f"stop_token_seqs[{i}]: expected non-empty tokens in [0, {vocab}), got {list(seq)}"
                )
        snap = request.snapshot
        if snap is not None and snap.base_model != self.base_model:
            raise ValueError(
                f"snapshot: weights of {snap.base_model!r}, runtime serves {self.base_model!r}"
            )
        return prompt.astype(np.int32), n_prompt
