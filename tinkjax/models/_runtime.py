"""``ModelRuntime``: one base model, many LoRA adapters, and the operations a Tinker server needs.

State lives on the device: the adapter stack (every slot's LoRA weights, zero-padded to a
shared rank ``R``), the gradient accumulator of the same shape, and one optax AdamW state per
adapter. Every numeric operation is one call into a module-level jitted program (so runtimes
with the same model share compiled programs); host code only validates, packs and unpacks.

Metrics: ``forward_backward`` reports ``loss:sum`` per item; ``optim_step`` reports
``grad_norm:mean`` (global norm of the accumulated gradient, before clipping),
``learning_rate:mean`` and ``step:max`` (the adapter's optimizer step count after the update).

Layout: adapters and training here; state export/import and PEFT in ``_runtime_state``,
sampling in ``_runtime_sampling`` (both mixins of :class:`ModelRuntime`); the jitted programs
and their trace counts in ``_compiled``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Mapping, Sequence
from typing import cast

import jax
import jax.numpy as jnp
import numpy as np
import optax

from tinkjax.losses import LOSS_SUM_METRIC, LossGraph, get_loss_definition, resolve_loss_config
from tinkjax.models._adapters import TARGETS, seed_key_data, target_shape, trained_targets
from tinkjax.models._batching import (
    PackedBatch,
    bucket_length,
    bucket_pow2,
    bucket_rows,
    chunk_shape,
    pack_rows,
    plan_chunks,
    validate_datum,
)
from tinkjax.models._compiled import (
    commit_jit,
    finite_rows_jit,
    forward_backward_jit,
    forward_jit,
    init_lora_jit,
    install_jit,
    logprobs_vjp_jit,
    optim_jit,
    pad_rank,
    release_compile_memory,
    trace_counts,
    vjp_backward_jit,
    zero_slot_jit,
)
from tinkjax.models._config import ModelConfig, get_model_config
from tinkjax.models._custom import row_losses, validate_custom_datum
from tinkjax.models._hf import HFTokenizer
from tinkjax.models._programs import LoraStack
from tinkjax.models._runtime_sampling import SamplingMixin, fresh_seed
from tinkjax.models._runtime_state import StateMixin
from tinkjax.models._runtime_warmup import ShapeKey, warm_program
from tinkjax.models._sharding import base_params_of, shard_rows
from tinkjax.models._tokenizer import ByteTokenizer
from tinkjax.models._types import (
    LORA_ALPHA,
    AdamHyper,
    AdapterInfo,
    DatumArrays,
    FwdBwdItem,
    FwdBwdResult,
    NonFiniteResultError,
    UnknownAdapterError,
    ValidDatum,
)
from tinkjax.models._warmup import Warmup

__all__ = ["ModelRuntime", "trace_counts"]


def _non_finite_outputs(outputs: Sequence[Mapping[str, np.ndarray]], total: float) -> str:
    """Why an item's outputs are refused: the first datum and output that is not finite."""
    for j, out in enumerate(outputs):
        for name, values in out.items():
            if not np.isfinite(values).all():
                return f"data[{j}].{name} is not finite (NaN or infinity)"
    return f"loss:sum is not finite ({total})"


class ModelRuntime(StateMixin, SamplingMixin):
    """One base model (a preset from ``PRESETS``) and any number of LoRA adapters.

    Args:
        base_model: preset name, e.g. ``"tinkjax/bytelm-1m"``, or the name a Hugging Face
            model is served under (with ``config``).
        config: the model's configuration (default: the preset ``base_model``); one from
            :func:`tinkjax.models.load_hf_config` reads its weights and tokenizer from its
            folder.
        dtype: parameter and activation dtype (``jnp.float64`` needs x64 enabled).
        mesh: shard the base weights and batches over this device mesh
            (:mod:`tinkjax.models.sharding`); ``None``: one device.
        max_lora_rank: the largest rank ``create_adapter`` accepts.
        adapter_slots: initial capacity of the adapter stack (it doubles when full; each
            growth recompiles the programs once).
        warmup: ``(loss_fn, sequence length)`` pairs whose training programs are compiled
            ahead, on a background thread, whenever the adapter stack changes shape (see
            :meth:`warmup_keys`); empty (the default): each compiles on its first call.
    """

    def __init__(
        self,
        base_model: str,
        *,
        config: ModelConfig | None = None,
        dtype: jnp.dtype = jnp.float32,
        max_lora_rank: int = 64,
        adapter_slots: int = 8,
        warmup: Sequence[tuple[str, int]] = (),
        mesh: jax.sharding.Mesh | None = None,
    ) -> None:
        self.config: ModelConfig = config if config is not None else get_model_config(base_model)
        self.base_model = base_model
        self.mesh = mesh
        self.tokenizer: ByteTokenizer | HFTokenizer = (
            HFTokenizer(self.config.source) if self.config.source else ByteTokenizer()
        )
        self.dtype = jnp.dtype(dtype)
        if self.dtype == jnp.float64 and not jax.config.jax_enable_x64:  # type: ignore[attr-defined]
            raise ValueError("dtype: float64 needs x64 (use `with jax.enable_x64(True):`)")
        self.max_lora_rank = max_lora_rank
        if adapter_slots < 1:
            raise ValueError(f"adapter_slots: expected >= 1, got {adapter_slots}")
        self._initial_slots = adapter_slots
        self._np_dtype = np.dtype(self.dtype.name)
        self._base = base_params_of(self.config, self.dtype, mesh)
        release_compile_memory()
        self._rank = 0  # R, the stack's padded rank (0: no stack yet)
        self._stack: LoraStack = {}
        self._acc: LoraStack = {}
        self._scale = np.zeros((0,), self._np_dtype)  # [S] alpha / rank per slot
        self._slots: dict[str, int] = {}
        self._infos: dict[str, AdapterInfo] = {}
        self._opt: dict[str, optax.OptState] = {}
        for i, (loss_fn, length) in enumerate(warmup):
            get_loss_definition(loss_fn)
            if isinstance(length, bool) or not isinstance(length, int) or length < 1:
                raise ValueError(f"warmup[{i}]: length {length!r} is not a positive int")
        self.warmup_shapes = tuple((loss_fn, bucket_length(n)) for loss_fn, n in warmup)
        self._x64 = bool(jax.config.jax_enable_x64)  # type: ignore[attr-defined]
        self._warmup = Warmup(self._warm)

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
            rank=rank, seed=fresh_seed() if seed is None else seed,
            train_attn=train_attn, train_mlp=train_mlp, train_unembed=train_unembed,
        )  # fmt: skip
        self._check_info(info)
        structure = dataclasses.replace(info, seed=0)  # the seed is traced: no compile per seed
        weights = init_lora_jit(self.config, structure, self.dtype, seed_key_data(info.seed))
        self._install(adapter_id, info, weights, None)

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
            self._stack = pad_rank(self._stack, new_rank)
            self._acc = pad_rank(self._acc, new_rank)
            for aid, state in self._opt.items():
                adam = state[0]
                self._opt[aid] = (
                    adam._replace(mu=pad_rank(adam.mu, new_rank), nu=pad_rank(adam.nu, new_rank)),
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
        self._stack, self._acc, fresh = install_jit(
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
                    mu={**adam.mu, **pad_rank(dict(mu), self._rank)},
                    nu={**adam.nu, **pad_rank(dict(nu), self._rank)},
                ),
                *fresh[1:],
            )
        self._opt[adapter_id] = fresh
        release_compile_memory()
        if self.warmup_shapes:
            self._warmup.request(self.warmup_keys())

    # ----------------------------------------------------------------- warm-up

    def _key(
        self, kind: str, loss_fn: str = "", length: int = 0, width: int = 0, adapters: int = 0
    ) -> ShapeKey:
        """The shape key of a training program for the current stack (slots ``S``, rank ``R``)."""
        return (kind, loss_fn, self._scale.shape[0], self._rank, length, width, adapters)

    def warmup_keys(self) -> list[ShapeKey]:
        """The programs the warm-up compiles for the current stack, most needed first: the
        optimizer step, then per ``warmup_shapes`` entry (``K = 1``) forward/backward for
        every power of two of adapters up to the loaded adapters' bucket (largest first:
        a sweep's calls carry all its runs), and forward."""
        if not self._stack:
            return []
        keys = [self._key("optim_step")]
        top = bucket_pow2(max(len(self._slots), 1))
        counts = [1 << j for j in range(top.bit_length() - 1, -1, -1)]
        for n, k in enumerate(counts):
            for loss_fn, length in self.warmup_shapes:
                keys.append(self._key("forward_backward", loss_fn, length, 1, k))
                if n == 0:
                    keys.append(self._key("forward", loss_fn, length, 1))
        return keys

    def warmup_pending(self) -> int:
        """Programs queued for, or being compiled by, the warm-up."""
        return self._warmup.pending()

    def wait_warmup(self, timeout: float | None = None) -> bool:
        """Waits until the warm-up has compiled what it was asked; ``False`` on timeout."""
        return self._warmup.wait(timeout)

    def _warm(self, key: Hashable) -> None:
        """Compiles the program of ``key`` (:func:`warm_program`)."""
        warm_program(self, cast(ShapeKey, key))

    # ----------------------------------------------------------------- training

    def forward_backward(
        self, items: Sequence[FwdBwdItem], *, forward_only: bool
    ) -> list[FwdBwdResult]:
        """Per-datum logprobs and losses of every item; unless ``forward_only``, each item's
        loss gradient is added to its adapter's accumulator (until ``optim_step``).

        Items may target different adapters and losses: rows with the same loss share one
        compiled call (in chunks of one adapter's rows each). Everything is validated before any
        computation, so a bad item changes no state.

        An item whose outputs, loss or gradient are not all finite is refused: its result has
        ``refused`` set (and no outputs), and nothing of it reaches the accumulator. The
        gradients of a call go to a scratch accumulator of its adapters first and are
        committed per adapter only when finite; an item refused only because another item of
        the same adapter was (or may have been) is run again alone.

        Raises:
            UnknownAdapterError: an item names an unloaded adapter.
            ValueError: unknown loss or config key, missing input, bad token or shape.
        """
        groups: dict[
            str | LossGraph, list[tuple[ValidDatum, int, Mapping[str, float], int, int]]
        ] = {}
        slots: list[int] = []
        for i, item in enumerate(items):
            slot = self._slot(item.adapter_id)
            slots.append(slot)
            loss = item.loss_fn if item.custom_loss is None else item.custom_loss
            config = (
                self._resolve_config(item.loss_fn, item.loss_fn_config, f"items[{i}]")
                if item.custom_loss is None
                else {}
            )
            for j, datum in enumerate(item.datums):
                valid = self._valid(datum, f"items[{i}].datums[{j}]", loss)
                groups.setdefault(loss, []).append((valid, slot, config, i, j))
        used = list(dict.fromkeys(slots))  # the call's adapters, in first-use order
        position = {slot: n for n, slot in enumerate(used)}
        delta = None if forward_only else self._scratch(bucket_pow2(len(used)))
        outputs: list[list[dict[str, np.ndarray]]] = [[{} for _ in item.datums] for item in items]
        # loss:sum is summed from the runtime-precision losses (the outputs are float32 on the
        # wire), so a float64 runtime reports a float64-exact metric.
        totals = [0.0] * len(items)
        finite = [True] * len(items)
        for loss_fn, rows in groups.items():
            length = bucket_length(max(r[0].tokens.shape[0] for r in rows))
            width = bucket_pow2(max(r[0].targets.shape[1] for r in rows))
            n_chunks, per = chunk_shape(length, width)
            chunks = plan_chunks([r[1] for r in rows], per)
            for start in range(0, len(chunks), n_chunks):
                call = chunks[start : start + n_chunks]
                members = sorted(r for chunk in call for r in chunk)
                local = {r: n for n, r in enumerate(members)}
                call_rows = [rows[r] for r in members]
                call_chunks = [[local[r] for r in chunk] for chunk in call]
                lp, el, delta, positions = self._run_batch(
                    loss_fn, call_rows, call_chunks, length, width, delta, used
                )
                for (row, _, _, i, j), (c, q) in zip(call_rows, positions, strict=True):
                    n, kk = row.targets.shape
                    shape = (n,) if row.one_dim else (n, kk)
                    lp_r, el_r = lp[c, q, :n, :kk], el[c, q, :n, :kk]
                    outputs[i][j] = {
                        "logprobs": lp_r.reshape(shape).astype(np.float32),
                        "elementwise_loss": el_r.reshape(shape).astype(np.float32),
                    }
                    totals[i] += float(np.sum(el_r, dtype=np.float64))
                    finite[i] = finite[i] and all(
                        np.isfinite(v).all() for v in outputs[i][j].values()
                    )
        reasons = [
            None if ok and np.isfinite(total) else _non_finite_outputs(out, total)
            for ok, total, out in zip(finite, totals, outputs, strict=True)
        ]
        rerun: list[int] = []
        if delta is not None:
            grad_ok = np.asarray(finite_rows_jit(delta))
            keep = np.zeros(grad_ok.shape, bool)
            for slot, n in position.items():
                mine = [i for i, s in enumerate(slots) if s == slot]
                keep[n] = bool(grad_ok[n]) and all(reasons[i] is None for i in mine)
                if keep[n]:
                    continue
                for i in mine:
                    if reasons[i] is not None:
                        continue
                    if len(mine) > 1:
                        rerun.append(i)  # maybe refused for another item's sake: run it alone
                    else:
                        reasons[i] = "its gradient is not finite (NaN or infinity)"
            padded = np.array(used + [used[0]] * (len(keep) - len(used)), np.int32)
            self._acc = commit_jit(self._acc, delta, padded, keep)
        results = [
            FwdBwdResult(outputs=outputs[i], metrics={LOSS_SUM_METRIC: totals[i]})
            if reasons[i] is None
            else FwdBwdResult(outputs=[], metrics={}, refused=reasons[i])
            for i in range(len(items))
        ]
        for i in rerun:
            results[i] = self.forward_backward([items[i]], forward_only=False)[0]
        release_compile_memory()
        return results

    def _scratch(self, n: int) -> LoraStack:
        """A zero accumulator for ``n`` adapters (the gradients of one call)."""
        return {
            t: (jnp.zeros((n, *a.shape[1:]), a.dtype), jnp.zeros((n, *b.shape[1:]), b.dtype))
            for t, (a, b) in self._acc.items()
        }

    def _valid(
        self, datum: DatumArrays | ValidDatum, where: str, loss_fn: str | LossGraph
    ) -> ValidDatum:
        """``datum`` checked against this model; a :class:`ValidDatum` (checked by the caller,
        e.g. the server at its edge) is trusted and only cast to the runtime's dtype."""
        if isinstance(datum, ValidDatum):
            if all(v.dtype == self._np_dtype for v in datum.inputs.values()):
                return datum
            inputs = {k: v.astype(self._np_dtype) for k, v in datum.inputs.items()}
            return ValidDatum(datum.tokens, datum.targets, inputs, datum.one_dim)
        if isinstance(loss_fn, LossGraph):
            return validate_custom_datum(
                datum, loss_fn, where=where, vocab=self.config.vocab_size,
                max_len=self.config.max_seq_len, dtype=self._np_dtype,
            )  # fmt: skip
        return validate_datum(
            datum, where=where, loss_fn=loss_fn, vocab=self.config.vocab_size,
            max_len=self.config.max_seq_len, dtype=self._np_dtype,
        )  # fmt: skip

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
        loss_fn: str | LossGraph,
        rows: Sequence[tuple[ValidDatum, int, Mapping[str, float], int, int]],
        chunks: Sequence[Sequence[int]],
        length: int,
        width: int,
        delta: LoraStack | None,
        used: Sequence[int],
    ) -> tuple[np.ndarray, np.ndarray, LoraStack | None, list[tuple[int, int]]]:
        """One compiled call over ``chunks`` of ``rows``; with ``delta`` (a scratch accumulator
        of the adapters in ``used``, in that order) also the backward pass, whose gradients are
        added to ``delta``. Returns the ``[C, P, T, K]`` outputs and each row's position."""
        input_keys = (
            () if isinstance(loss_fn, LossGraph)
            else tuple(get_loss_definition(loss_fn).input_arguments)
        )  # fmt: skip
        k = bucket_pow2(len(used))
        packed = pack_rows(
            [(d, slot, cfg) for d, slot, cfg, _, _ in rows],
            chunks,
            batch_slots=list(used) + [used[0]] * (k - len(used)),
            slot_scale=self._scale,
            input_keys=input_keys,
            config_keys=tuple(sorted(rows[0][2])),
            length=length,
            width=width,
            dtype=self._np_dtype,
        )
        if isinstance(loss_fn, LossGraph):
            lp_c, el_c, delta = self._run_custom(loss_fn, [r[0] for r in rows], packed, delta)
            return lp_c, el_c, delta, packed.positions
        lp, el, delta = self._call(loss_fn, packed, delta)
        out = np.asarray(lp), np.asarray(el)
        release_compile_memory()
        return out[0], out[1], delta, packed.positions

    def _call(
        self, loss_fn: str, packed: PackedBatch, delta: LoraStack | None
    ) -> tuple[jax.Array, jax.Array, LoraStack | None]:
        args = dict(
            base=self._base, stack=self._stack, chunk_slot=packed.chunk_slot,
            n_live=packed.n_live, chunk_scale=packed.chunk_scale, tokens=packed.tokens,
            targets=packed.targets, valid=packed.valid, inputs=packed.inputs,
            loss_config=packed.loss_config,
        )  # fmt: skip
        length, width = packed.targets.shape[2:]
        if self.mesh is not None:
            args = shard_rows(args, self.mesh, packed.tokens.shape[:2])
        if delta is None:
            self._warmup.claim(self._key("forward", loss_fn, length, width))
            lp, el = forward_jit(config=self.config, loss_name=loss_fn, **args)
            return lp, el, None
        adapters = len(packed.batch_slots)
        self._warmup.claim(self._key("forward_backward", loss_fn, length, width, adapters))
        delta, lp, el = forward_backward_jit(
            config=self.config, loss_name=loss_fn, acc=delta, chunk_acc=packed.chunk_acc, **args
        )
        return lp, el, delta

    def _run_custom(
        self,
        graph: LossGraph,
        datums: Sequence[ValidDatum],
        packed: PackedBatch,
        delta: LoraStack | None,
    ) -> tuple[np.ndarray, np.ndarray, LoraStack | None]:
        """A server-side custom loss: one forward (logprobs and the model's VJP), the graph
        per datum at its own shape, one backward (see :mod:`._custom`). The call's rows are
        taken out of its chunks into a row batch (``bucket_rows``) and the outputs put back."""
        n_rows = bucket_rows(len(datums))
        where = tuple(np.array(packed.positions, np.int64).T)  # (chunks, rows)
        tokens = np.zeros((n_rows, packed.tokens.shape[2]), np.int32)
        targets = np.zeros((n_rows, *packed.targets.shape[2:]), np.int32)
        row_slot = np.zeros((n_rows,), np.int32)
        tokens[: len(datums)] = packed.tokens[where]
        targets[: len(datums)] = packed.targets[where]
        row_slot[: len(datums)] = packed.chunk_acc[where[0]]
        scale = self._scale[packed.batch_slots].astype(self._np_dtype)
        lp_dev, vjp = logprobs_vjp_jit(
            config=self.config, base=self._base, stack=self._stack,
            batch_slots=packed.batch_slots, scale=scale, row_slot=row_slot, tokens=tokens,
            targets=targets,
        )  # fmt: skip
        lp = np.asarray(lp_dev)
        el, cotangent = row_losses(graph, lp, datums)
        if delta is not None:
            first = {int(s): n for n, s in reversed(list(enumerate(packed.batch_slots)))}
            acc_slots = np.array([first[int(s)] for s in packed.batch_slots], np.int32)
            delta = vjp_backward_jit(vjp, cotangent, delta, acc_slots)
        lp_out = np.zeros(packed.targets.shape, lp.dtype)
        el_out = np.zeros(packed.targets.shape, el.dtype)
        lp_out[where] = lp[: len(datums)]
        el_out[where] = el[: len(datums)]
        release_compile_memory()
        return lp_out, el_out, delta

    def optim_step(self, adapter_id: str, params: AdamHyper) -> dict[str, float]:
        """One AdamW step of ``adapter_id`` on its accumulated gradient, then zeroes it.

        Returns:
            ``{"grad_norm:mean", "learning_rate:mean", "step:max"}``.

        Raises:
            NonFiniteResultError: the gradient norm, new weights or new moments would not be
                finite; the step is not taken (weights, optimizer state and the accumulated
                gradient stay exactly as they were, checked on the device before committing).
        """
        slot = self._slot(adapter_id)
        # AdamHyper checked its values when it was built.
        hyper = {key: np.asarray(value, self._np_dtype) for key, value in params.as_dict().items()}
        self._warmup.claim(self._key("optim_step"))
        self._stack, self._opt[adapter_id], stats = optim_jit(
            self._stack, self._acc, self._opt[adapter_id], np.int32(slot), hyper
        )
        grad_norm, step = float(stats["grad_norm"]), float(stats["step"])
        if not bool(stats["finite"]):
            release_compile_memory()
            what = "the gradient norm" if not np.isfinite(grad_norm) else "the updated weights"
            raise NonFiniteResultError(
                f"optim_step refused, a non-finite result: {what} would not be finite (grad_norm {grad_norm}, learning_rate "
                f"{params.learning_rate}); the step was not taken and the model is unchanged"
            )
        self._acc = zero_slot_jit(self._acc, np.int32(slot))
        release_compile_memory()
        return {
            "grad_norm:mean": grad_norm,
            "learning_rate:mean": float(params.learning_rate),
            "step:max": step,
        }

    def accumulated_gradients(self, adapter_id: str) -> dict[str, np.ndarray]:
        """The pending gradient of an adapter (names as in ``export_state``)."""
        return self._flat("lora", self._slice(self._acc, adapter_id), adapter_id)
