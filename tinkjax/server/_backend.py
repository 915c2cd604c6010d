"""The backend behind the HTTP routes: models, samplers, and the jobs the worker runs.

Handlers call the ``submit_*`` methods with decoded wire requests. Each validates the request
completely (so bad input is answered 4xx and changes nothing), registers what the client must
see at once (a model id, a sampler id), and queues a job whose ``run`` executes on the worker
thread, the only thread that touches a ``ModelRuntime``.
"""

from __future__ import annotations

import collections
import json
import math
import threading
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from tinkjax.server._errors import ApiError
from tinkjax.server._scheduler import FusedWork, Job, Scheduler
from tinkjax.server._store import CheckpointStore, validate_name
from tinkjax.types import (
    AdamParams,
    CreateModelRequest,
    CreateModelResponse,
    CreateSamplingSessionRequest,
    CreateSamplingSessionResponse,
    Datum,
    DimuonOptimizerConfig,
    ForwardBackwardOutput,
    ForwardBackwardRequest,
    ForwardRequest,
    GetInfoResponse,
    GetSamplerResponse,
    LoadWeightsRequest,
    LoadWeightsResponse,
    LoraConfig,
    ModelData,
    OptimStepRequest,
    OptimStepResponse,
    SampledSequence,
    SampleRequest,
    SampleResponse,
    SaveWeightsForSamplerRequest,
    SaveWeightsForSamplerResponseInternal,
    SaveWeightsRequest,
    SaveWeightsResponse,
    SupportedModel,
    TensorData,
    UnloadModelRequest,
    UnloadModelResponse,
    UntypedAPIFuture,
    parse_tinker_path,
)

if TYPE_CHECKING:
    from tinkjax.models import AdapterInfo, AdapterSnapshot, ModelConfig, ModelRuntime
    from tinkjax.server._futures import FutureTable

__all__ = ["Backend", "ModelRecord", "SamplerRecord"]

#: ``max_tokens`` used when a sample request leaves it unset (capped by the context length).
DEFAULT_MAX_TOKENS = 64
#: In-memory weight snapshots kept for unnamed sampler saves (oldest evicted first; RL loops
#: make one per iteration).
MAX_SNAPSHOT_SAMPLERS = 256
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


class Backend:
    """Models, samplers and the scheduler of one server.

    Args:
        store: durable metadata and checkpoint files.
        futures: where job results go.
        seq_gap_timeout_s: how long a request waits for a missing ``seq_id``.
        models: base models served (``None``: every preset).
    """

    def __init__(
        self,
        store: CheckpointStore,
        futures: FutureTable,
        *,
        seq_gap_timeout_s: float,
        models: Sequence[str] | None = None,
    ) -> None:
        self.store = store
        self.futures = futures
        self.scheduler = Scheduler(futures, self._run_fused, seq_gap_timeout_s=seq_gap_timeout_s)
        self.allowed_models = None if models is None else tuple(models)
        self._lock = threading.RLock()
        self._models: dict[str, ModelRecord] = {}
        self._samplers: dict[str, SamplerRecord] = {}
        self._snapshot_ids: collections.deque[str] = collections.deque()
        self._runtimes: dict[str, ModelRuntime] = {}

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Start the worker (it imports the model code first, off the caller's thread)."""
        self.scheduler.start(warmup=_warmup)

    def stop(self) -> None:
        """Stop the worker thread."""
        self.scheduler.stop()

    # ----------------------------------------------------------------- models

    def presets(self) -> dict[str, ModelConfig]:
        """Served base models and their configurations."""
        from tinkjax.models import PRESETS

        names = self.allowed_models if self.allowed_models is not None else tuple(PRESETS)
        return {n: PRESETS[n] for n in names if n in PRESETS}

    def capabilities(self) -> list[SupportedModel]:
        """``get_server_capabilities`` entries."""
        return [
            SupportedModel(
                model_name=name, max_context_length=cfg.max_seq_len, trainable=True, sampleable=True
            )
            for name, cfg in self.presets().items()
        ]

    def _config(self, base_model: Any, field: str = "base_model") -> ModelConfig:
        presets = self.presets()
        if not isinstance(base_model, str) or base_model not in presets:
            raise ApiError(
                400,
                f"{field}: unknown base model {base_model!r}; this server serves "
                f"{sorted(presets)}",
                field=field,
            )
        return presets[base_model]

    def model(self, model_id: Any) -> ModelRecord:
        """The model ``model_id``; 404 naming it otherwise."""
        with self._lock:
            record = self._models.get(model_id) if isinstance(model_id, str) else None
        if record is None:
            raise ApiError(
                404,
                f"model_id: unknown model {model_id!r} (create it with create_model or "
                "load_weights; models do not survive a server restart)",
                field="model_id",
            )
        return record

    def models(self) -> list[ModelRecord]:
        """Every live model."""
        with self._lock:
            return list(self._models.values())

    def runtime(self, base_model: str) -> ModelRuntime:
        """The runtime of ``base_model`` (worker thread only; created on first use)."""
        rt = self._runtimes.get(base_model)
        if rt is None:
            from tinkjax.models import ModelRuntime

            rt = ModelRuntime(base_model)
            self._runtimes[base_model] = rt
        return rt

    def get_info(self, model_id: Any) -> GetInfoResponse:
        """``/get_info``."""
        from tinkjax.models import ByteTokenizer

        record = self.model(model_id)
        return GetInfoResponse(
            model_id=record.model_id,
            model_data=ModelData(
                arch="bytelm", model_name=record.base_model,
                tokenizer_id=ByteTokenizer.name_or_path,
            ),
            is_lora=True,
            lora_rank=record.rank,
            model_name=record.base_model,
            type="get_info",
        )

    def _require_session(self, session_id: str) -> None:
        if not self.store.has_session(session_id):
            raise ApiError(
                404, f"session_id: unknown session {session_id!r}", field="session_id"
            )

    def _adapter_info(self, record: ModelRecord) -> AdapterInfo:
        from tinkjax.models import AdapterInfo

        return AdapterInfo(
            rank=record.rank, seed=record.seed if record.seed is not None else 0,
            train_attn=record.train_attn, train_mlp=record.train_mlp,
            train_unembed=record.train_unembed,
        )  # fmt: skip

    def _register(self, record: ModelRecord) -> None:
        with self._lock:
            self._models[record.model_id] = record

    def _unregister(self, model_id: str) -> None:
        with self._lock:
            self._models.pop(model_id, None)
        self.scheduler.forget_model(model_id)

    def _ensure_run(self, record: ModelRecord) -> None:
        if not self.store.has_training_run(record.model_id):
            meta = record.user_metadata
            self.store.add_training_run(
                record.model_id, base_model=record.base_model, is_lora=True,
                lora_rank=record.rank, session_id=record.session_id,
                user_metadata=None if meta is None else {k: str(v) for k, v in meta.items()},
            )  # fmt: skip

    def submit_create_model(self, req: CreateModelRequest, digest: str) -> UntypedAPIFuture:
        """``/create_model``: a LoRA adapter ``{session_id}:train:{model_seq_id}``."""
        self._require_session(req.session_id)
        _check_int(req.model_seq_id, "model_seq_id", low=0)
        model_id = f"{req.session_id}:train:{req.model_seq_id}"
        existing = self.scheduler.lookup(model_id, 0, digest)
        if existing is not None:
            return UntypedAPIFuture(request_id=existing, model_id=model_id)
        if self.scheduler.known_model(model_id) or self.store.has_training_run(model_id):
            raise ApiError(
                400, f"model_seq_id: model {model_id!r} already exists", field="model_seq_id"
            )
        self._config(req.base_model)
        if isinstance(req.optimizer_config, DimuonOptimizerConfig):
            raise ApiError(
                400,
                "optimizer_config: only adamw is supported by the local backend",
                field="optimizer_config",
            )
        lora = req.lora_config if req.lora_config is not None else LoraConfig(rank=32)
        _check_int(lora.rank, "lora_config.rank", low=1, high=64)
        if lora.seed is not None:
            _check_int(lora.seed, "lora_config.seed", low=0, high=2**64 - 1)
        if not (lora.train_attn or lora.train_mlp or lora.train_unembed):
            raise ApiError(
                400,
                "lora_config: at least one of train_attn, train_mlp, train_unembed must be true",
                field="lora_config",
            )
        record = ModelRecord(
            model_id=model_id, base_model=req.base_model, rank=lora.rank, seed=lora.seed,
            train_attn=lora.train_attn, train_mlp=lora.train_mlp,
            train_unembed=lora.train_unembed, session_id=req.session_id,
            user_metadata=req.user_metadata,
        )  # fmt: skip

        def run() -> CreateModelResponse:
            try:
                rt = self.runtime(record.base_model)
                rt.create_adapter(
                    model_id, rank=record.rank, seed=record.seed, train_attn=record.train_attn,
                    train_mlp=record.train_mlp, train_unembed=record.train_unembed,
                )  # fmt: skip
                record.seed = rt.adapter_info(model_id).seed
                self._ensure_run(record)
            except Exception:
                self._unregister(model_id)
                raise
            return CreateModelResponse(model_id=model_id)

        job = Job(_new_request_id(), "create_model", run=run, model_id=model_id, seq_id=0)
        self._register(record)
        try:
            request_id = self.scheduler.submit(job, digest=digest, register_next_seq=0)
        except Exception:
            with self._lock:
                self._models.pop(model_id, None)
            raise
        return UntypedAPIFuture(request_id=request_id, model_id=model_id)

    def _ordered(
        self, model_id: str, seq_id: Any, digest: str
    ) -> tuple[ModelRecord, int | None, str | None]:
        """Common checks of an ordered request: the model, the seq id, a duplicate's id."""
        record = self.model(model_id)
        if seq_id is None:
            return record, None, None
        _check_int(seq_id, "seq_id", low=0)
        return record, seq_id, self.scheduler.lookup(model_id, seq_id, digest)

    def _submit_ordered(
        self, job: Job, record: ModelRecord, digest: str
    ) -> UntypedAPIFuture:
        request_id = self.scheduler.submit(job, digest=digest)
        return UntypedAPIFuture(request_id=request_id, model_id=record.model_id)

    # ----------------------------------------------------------------- training

    def submit_forward_backward(
        self, req: ForwardBackwardRequest | ForwardRequest, digest: str
    ) -> UntypedAPIFuture:
        """``/forward_backward`` (protobuf or JSON) and JSON-era ``/forward``."""
        forward_only = isinstance(req, ForwardRequest)
        fb = req.forward_input if isinstance(req, ForwardRequest) else req.forward_backward_input
        record, seq_id, existing = self._ordered(req.model_id, req.seq_id, digest)
        if existing is not None:
            return UntypedAPIFuture(request_id=existing, model_id=record.model_id)
        item = self._fwdbwd_item(record, fb.data, fb.loss_fn, fb.loss_fn_config)
        kind = "forward" if forward_only else "forward_backward"
        job = Job(
            _new_request_id(), kind, model_id=record.model_id, seq_id=seq_id,
            fused=FusedWork(record.base_model, item, forward_only),
        )  # fmt: skip
        return self._submit_ordered(job, record, digest)

    def _fwdbwd_item(
        self,
        record: ModelRecord,
        data: Sequence[Datum],
        loss_fn: Any,
        loss_fn_config: Mapping[str, Any] | None,
    ) -> Any:
        from tinkjax.losses import get_loss_definition, resolve_loss_config
        from tinkjax.models import DatumArrays, FwdBwdItem
        from tinkjax.models._batching import validate_datum

        try:
            get_loss_definition(loss_fn)
        except ValueError as exc:
            raise ApiError(400, str(exc), field="loss_fn") from None
        config: dict[str, float] = {}
        for key, value in resolve_loss_config(loss_fn, loss_fn_config).items():
            config[key] = _check_float(value, f"loss_fn_config[{key!r}]")
        cfg = self._config(record.base_model)
        datums = []
        for i, datum in enumerate(data):
            try:
                tokens = datum.model_input.to_numpy()
            except ValueError as exc:
                raise ApiError(400, f"data[{i}].model_input: {exc}", field="model_input") from None
            arrays = DatumArrays(
                input_tokens=np.asarray(tokens),
                loss_fn_inputs={k: td.to_numpy() for k, td in datum.loss_fn_inputs.items()},
            )
            validate_datum(
                arrays, where=f"data[{i}]", loss_fn=loss_fn, vocab=cfg.vocab_size,
                max_len=cfg.max_seq_len, dtype=np.dtype(np.float32),
            )  # fmt: skip
            datums.append(arrays)
        return FwdBwdItem(
            adapter_id=record.model_id, datums=datums, loss_fn=loss_fn, loss_fn_config=config
        )

    def _run_fused(self, jobs: Sequence[Job]) -> list[Any]:
        fused = [j.fused for j in jobs]
        assert all(f is not None for f in fused)
        rt = self.runtime(fused[0].base_model)  # type: ignore[union-attr]
        forward_only = fused[0].forward_only  # type: ignore[union-attr]
        try:
            results: list[Any] = rt.forward_backward(
                [f.item for f in fused], forward_only=forward_only  # type: ignore[union-attr]
            )
        except (ValueError, KeyError):
            if len(jobs) == 1:
                raise
            # The runtime validates before computing: retry one by one to blame the right job.
            results = []
            for f in fused:
                try:
                    results.append(rt.forward_backward([f.item], forward_only=forward_only)[0])  # type: ignore[union-attr]
                except (ValueError, KeyError) as exc:
                    results.append(exc)
        return [r if isinstance(r, Exception) else _fwdbwd_output(r) for r in results]

    def submit_optim_step(self, req: OptimStepRequest, digest: str) -> UntypedAPIFuture:
        """``/optim_step`` (AdamW only)."""
        from tinkjax.models import AdamHyper

        record, seq_id, existing = self._ordered(req.model_id, req.seq_id, digest)
        if existing is not None:
            return UntypedAPIFuture(request_id=existing, model_id=record.model_id)
        if req.optimizer_params is not None:
            raise ApiError(
                400, "optimizer_params: only adam_params (AdamW) is supported",
                field="optimizer_params",
            )  # fmt: skip
        params = req.adam_params if req.adam_params is not None else AdamParams()
        values = {}
        for key in _ADAM_KEYS:
            value = _check_float(getattr(params, key), f"adam_params.{key}")
            if value < 0:
                raise ApiError(
                    400, f"adam_params.{key}: expected >= 0, got {value}", field=f"adam_params.{key}"
                )
            values[key] = value
        for key in ("beta1", "beta2"):
            if values[key] >= 1:
                raise ApiError(
                    400, f"adam_params.{key}: expected < 1, got {values[key]}",
                    field=f"adam_params.{key}",
                )  # fmt: skip
        hyper = AdamHyper(**values)
        model_id = record.model_id

        def run() -> OptimStepResponse:
            metrics = self.runtime(record.base_model).optim_step(model_id, hyper)
            return OptimStepResponse(metrics=metrics)

        job = Job(_new_request_id(), "optim_step", run=run, model_id=model_id, seq_id=seq_id)
        return self._submit_ordered(job, record, digest)

    # ----------------------------------------------------------------- checkpoints

    def _meta(self, record: ModelRecord, **extra: Any) -> dict[str, Any]:
        return {
            "base_model": record.base_model, "is_lora": True, "lora_rank": record.rank,
            "seed": record.seed, "train_attn": record.train_attn, "train_mlp": record.train_mlp,
            "train_unembed": record.train_unembed, "optimizer_config": {"type": "adamw"},
            **extra,
        }  # fmt: skip

    def _check_ttl(self, ttl: Any) -> None:
        if ttl is not None:
            _check_int(ttl, "ttl_seconds", low=1, high=10 * 366 * 86400)

    def _check_free(self, model_id: str, kind: str, name: str, overwrite: bool) -> None:
        if overwrite:
            return
        try:
            self.store.get_checkpoint(model_id, f"{kind}/{name}")
        except KeyError:
            return
        raise ApiError(
            400,
            f"path: checkpoint tinker://{model_id}/{kind}/{name} already exists "
            "(pass overwrite=true to replace it)",
            field="path",
        )

    def submit_save_weights(self, req: SaveWeightsRequest, digest: str) -> UntypedAPIFuture:
        """``/save_weights``: LoRA weights and Adam state as ``weights/<name>``."""
        from safetensors.numpy import save

        record, seq_id, existing = self._ordered(req.model_id, req.seq_id, digest)
        if existing is not None:
            return UntypedAPIFuture(request_id=existing, model_id=record.model_id)
        name = validate_name(req.path if req.path is not None else f"step-{seq_id}", field="path")
        self._check_ttl(req.ttl_seconds)
        model_id = record.model_id

        def run() -> SaveWeightsResponse:
            self._check_free(model_id, "weights", name, req.overwrite)
            state = self.runtime(record.base_model).export_state(model_id, include_optimizer=True)
            blob = save({k: np.ascontiguousarray(v) for k, v in state.items()})
            ck = self.store.save_checkpoint(
                model_id, "weights", name, {STATE_FILE: blob},
                meta=self._meta(record, has_optimizer=True),
                user_metadata=req.user_metadata, ttl_seconds=req.ttl_seconds,
            )  # fmt: skip
            return SaveWeightsResponse(path=ck.tinker_path, type="save_weights")

        job = Job(_new_request_id(), "save_weights", run=run, model_id=model_id, seq_id=seq_id)
        return self._submit_ordered(job, record, digest)

    def submit_save_weights_for_sampler(
        self, req: SaveWeightsForSamplerRequest, digest: str
    ) -> UntypedAPIFuture:
        """``/save_weights_for_sampler``: named → PEFT checkpoint; unnamed → sampling session."""
        from safetensors.numpy import save

        record, seq_id, existing = self._ordered(req.model_id, req.seq_id, digest)
        if existing is not None:
            return UntypedAPIFuture(request_id=existing, model_id=record.model_id)
        model_id = record.model_id
        self._check_ttl(req.ttl_seconds)
        if req.path is not None:
            name = validate_name(req.path, field="path")

            def run_named() -> SaveWeightsForSamplerResponseInternal:
                self._check_free(model_id, "sampler_weights", name, False)
                tensors, config = self.runtime(record.base_model).export_peft(model_id)
                files = {
                    PEFT_FILE: save({k: np.ascontiguousarray(v) for k, v in tensors.items()}),
                    PEFT_CONFIG_FILE: json.dumps(config, indent=2, sort_keys=True).encode(),
                }
                ck = self.store.save_checkpoint(
                    model_id, "sampler_weights", name, files, meta=self._meta(record),
                    user_metadata=req.user_metadata, ttl_seconds=req.ttl_seconds,
                )  # fmt: skip
                return SaveWeightsForSamplerResponseInternal(
                    path=ck.tinker_path, type="save_weights_for_sampler"
                )

            job = Job(
                _new_request_id(), "save_weights_for_sampler", run=run_named,
                model_id=model_id, seq_id=seq_id,
            )  # fmt: skip
            return self._submit_ordered(job, record, digest)
        if req.sampling_session_seq_id is None:
            raise ApiError(
                400,
                "path or sampling_session_seq_id: one is required (a named save needs path)",
                field="path",
            )
        _check_int(req.sampling_session_seq_id, "sampling_session_seq_id", low=0)
        if record.session_id is None:
            raise ApiError(400, f"model {model_id!r} has no session", field="model_id")
        session_id = record.session_id
        sampler_id = f"{session_id}:sample:{req.sampling_session_seq_id}"
        self._check_new_sampler(sampler_id)

        def run_unnamed() -> SaveWeightsForSamplerResponseInternal:
            snapshot = self.runtime(record.base_model).snapshot(model_id)
            self.store.add_sampler(
                sampler_id, base_model=record.base_model, model_path=None, session_id=session_id
            )
            with self._lock:
                self._samplers[sampler_id] = SamplerRecord(
                    sampler_id=sampler_id, base_model=record.base_model, snapshot=snapshot
                )
                self._snapshot_ids.append(sampler_id)
                while len(self._snapshot_ids) > MAX_SNAPSHOT_SAMPLERS:
                    self._samplers.pop(self._snapshot_ids.popleft(), None)
            return SaveWeightsForSamplerResponseInternal(
                sampling_session_id=sampler_id, type="save_weights_for_sampler"
            )

        job = Job(
            _new_request_id(), "save_weights_for_sampler", run=run_unnamed,
            model_id=model_id, seq_id=seq_id,
        )  # fmt: skip
        return self._submit_ordered(job, record, digest)

    def _check_new_sampler(self, sampler_id: str) -> None:
        with self._lock:
            exists = sampler_id in self._samplers
        if not exists:
            try:
                self.store.get_sampler(sampler_id)
                exists = True
            except KeyError:
                pass
        if exists:
            raise ApiError(
                400,
                f"sampling_session_seq_id: sampler {sampler_id!r} already exists",
                field="sampling_session_seq_id",
            )

    def _checkpoint(self, path: Any, field: str = "path") -> tuple[Any, dict[str, Any], str]:
        """``(folder, meta, kind)`` of a saved checkpoint; 400 for a malformed path, 404 for
        an unknown one."""
        if not isinstance(path, str):
            raise ApiError(400, f"{field}: expected a tinker:// path, got {path!r}", field=field)
        try:
            parsed = parse_tinker_path(path)
        except ValueError as exc:
            raise ApiError(400, f"{field}: {exc}", field=field) from None
        try:
            folder, meta = self.store.checkpoint_dir(path)
        except KeyError:
            raise ApiError(404, f"{field}: no checkpoint at {path!r}", field=field) from None
        return folder, meta, parsed.kind

    def submit_load_weights(self, req: LoadWeightsRequest, digest: str) -> UntypedAPIFuture:
        """``/load_weights``: create-via-load (session + model_seq_id) or legacy reload."""
        if req.session_id is not None and req.model_seq_id is not None:
            self._require_session(req.session_id)
            _check_int(req.model_seq_id, "model_seq_id", low=0)
            model_id = f"{req.session_id}:train:{req.model_seq_id}"
            seq_id: int | None = 0
            existing = self.scheduler.lookup(model_id, 0, digest)
            if existing is not None:
                return UntypedAPIFuture(request_id=existing, model_id=model_id)
            if self.scheduler.known_model(model_id) or self.store.has_training_run(model_id):
                raise ApiError(
                    400, f"model_seq_id: model {model_id!r} already exists", field="model_seq_id"
                )
            create = True
        elif req.model_id is not None:
            record, seq_id, existing = self._ordered(req.model_id, req.seq_id, digest)
            if existing is not None:
                return UntypedAPIFuture(request_id=existing, model_id=record.model_id)
            model_id = record.model_id
            create = False
        else:
            raise ApiError(
                400, "load_weights needs session_id and model_seq_id, or model_id",
                field="model_id",
            )  # fmt: skip
        folder, meta, kind = self._checkpoint(req.path)
        if kind != "weights":
            raise ApiError(
                400,
                f"path: {req.path!r} is a {kind} checkpoint; load_weights needs a weights/ "
                "checkpoint (from save_state / save_weights)",
                field="path",
            )
        base_model = str(meta.get("base_model"))
        if req.base_model is not None and req.base_model != base_model:
            raise ApiError(
                400,
                f"base_model: {req.base_model!r} does not match the checkpoint's {base_model!r}",
                field="base_model",
            )
        self._config(base_model, field="path")
        if create:
            record = ModelRecord(
                model_id=model_id, base_model=base_model, rank=int(meta["lora_rank"]),
                seed=meta.get("seed"), train_attn=bool(meta.get("train_attn", True)),
                train_mlp=bool(meta.get("train_mlp", True)),
                train_unembed=bool(meta.get("train_unembed", True)),
                session_id=req.session_id, user_metadata=req.user_metadata,
            )  # fmt: skip
        elif base_model != record.base_model or int(meta["lora_rank"]) != record.rank:
            raise ApiError(
                400,
                f"path: checkpoint of {base_model!r} rank {meta['lora_rank']} does not fit model "
                f"{model_id!r} ({record.base_model!r} rank {record.rank})",
                field="path",
            )
        path = req.path
        optimizer = bool(req.optimizer)

        def run() -> LoadWeightsResponse:
            try:
                state = _load_state(folder)
                rt = self.runtime(record.base_model)
                rt.import_state(
                    model_id, state, info=self._adapter_info(record), include_optimizer=optimizer
                )
                if create:
                    self._ensure_run(record)
            except Exception:
                if create:
                    self._unregister(model_id)
                raise
            return LoadWeightsResponse(path=path, model_id=model_id, type="load_weights")

        job = Job(_new_request_id(), "load_weights", run=run, model_id=model_id, seq_id=seq_id)
        if not create:
            return self._submit_ordered(job, record, digest)
        self._register(record)
        try:
            request_id = self.scheduler.submit(job, digest=digest, register_next_seq=0)
        except Exception:
            with self._lock:
                self._models.pop(model_id, None)
            raise
        return UntypedAPIFuture(request_id=request_id, model_id=model_id)

    def submit_unload_model(self, req: UnloadModelRequest) -> UntypedAPIFuture:
        """``/unload_model``: frees the adapter once the model's queued requests ran."""
        record = self.model(req.model_id)
        model_id = record.model_id

        def run() -> UnloadModelResponse:
            rt = self.runtime(record.base_model)
            if rt.has_adapter(model_id):
                rt.remove_adapter(model_id)
            self._unregister(model_id)
            return UnloadModelResponse(model_id=model_id, type="unload_model")

        job = Job(_new_request_id(), "unload_model", run=run)
        request_id = self.scheduler.submit(job)
        return UntypedAPIFuture(request_id=request_id, model_id=model_id)

    # ----------------------------------------------------------------- sampling

    def submit_create_sampling_session(
        self, req: CreateSamplingSessionRequest
    ) -> CreateSamplingSessionResponse:
        """``/create_sampling_session`` from a base model or saved sampler weights."""
        self._require_session(req.session_id)
        _check_int(req.sampling_session_seq_id, "sampling_session_seq_id", low=0)
        sampler_id = f"{req.session_id}:sample:{req.sampling_session_seq_id}"
        if req.model_path is not None:
            _, meta, _ = self._checkpoint(req.model_path, field="model_path")
            base_model = str(meta.get("base_model"))
            if req.base_model is not None and req.base_model != base_model:
                raise ApiError(
                    400,
                    f"base_model: {req.base_model!r} does not match the weights' {base_model!r}",
                    field="base_model",
                )
        elif req.base_model is not None:
            base_model = req.base_model
        else:
            raise ApiError(400, "base_model or model_path: one is required", field="base_model")
        self._config(base_model)
        self._check_new_sampler(sampler_id)
        self.store.add_sampler(
            sampler_id, base_model=base_model, model_path=req.model_path,
            session_id=req.session_id,
        )  # fmt: skip
        with self._lock:
            self._samplers[sampler_id] = SamplerRecord(
                sampler_id=sampler_id, base_model=base_model, model_path=req.model_path
            )
        return CreateSamplingSessionResponse(sampling_session_id=sampler_id)

    def get_sampler(self, sampler_id: str) -> GetSamplerResponse:
        """``GET /samplers/{id}``."""
        with self._lock:
            record = self._samplers.get(sampler_id)
        if record is not None:
            return GetSamplerResponse(
                sampler_id=sampler_id, base_model=record.base_model, model_path=record.model_path
            )
        try:
            return self.store.get_sampler(sampler_id)
        except KeyError:
            raise ApiError(
                404, f"sampler_id: unknown sampler {sampler_id!r}", field="sampler_id"
            ) from None

    def _sampler_for(self, req: SampleRequest) -> SamplerRecord:
        if req.sampling_session_id is not None:
            with self._lock:
                record = self._samplers.get(req.sampling_session_id)
            if record is not None:
                return record
            info = self.get_sampler(req.sampling_session_id)
            if info.model_path is None:
                raise ApiError(
                    404,
                    f"sampling_session_id: {req.sampling_session_id!r} sampled from an in-memory "
                    f"weights snapshot, which is gone (only the last {MAX_SNAPSHOT_SAMPLERS} are "
                    "kept, and none survive a restart); create a new sampling client",
                    field="sampling_session_id",
                )
            record = SamplerRecord(
                sampler_id=info.sampler_id, base_model=info.base_model, model_path=info.model_path
            )
            with self._lock:
                self._samplers[info.sampler_id] = record
            return record
        if req.model_path is not None:
            _, meta, _ = self._checkpoint(req.model_path, field="model_path")
            return SamplerRecord(
                sampler_id="", base_model=meta["base_model"], model_path=req.model_path
            )
        if req.base_model is not None:
            self._config(req.base_model)
            return SamplerRecord(sampler_id="", base_model=req.base_model)
        raise ApiError(
            400,
            "sampling_session_id, model_path or base_model: one is required",
            field="sampling_session_id",
        )

    def submit_sample(self, req: SampleRequest) -> UntypedAPIFuture:
        """``/asample``: queue a sampling job; one sequence id per sample."""
        from tinkjax.models import SampleJob
        from tinkjax.models._tokenizer import EOS_TOKEN_ID

        sampler = self._sampler_for(req)
        cfg = self._config(sampler.base_model)
        try:
            prompt = np.asarray(req.prompt.to_numpy(), dtype=np.int64)
        except ValueError as exc:
            raise ApiError(400, f"prompt: {exc}", field="prompt") from None
        n_prompt = int(prompt.shape[0])
        if n_prompt == 0:
            raise ApiError(400, "prompt: empty prompt", field="prompt")
        bad = (prompt < 0) | (prompt >= cfg.vocab_size)
        if bad.any():
            raise ApiError(
                400, f"prompt: token {int(prompt[bad][0])} outside [0, {cfg.vocab_size})",
                field="prompt",
            )  # fmt: skip
        if n_prompt >= cfg.max_seq_len:
            raise ApiError(
                400, f"prompt: {n_prompt} tokens leave no room in max_seq_len {cfg.max_seq_len}",
                field="prompt",
            )  # fmt: skip
        _check_int(req.num_samples, "num_samples", low=1, high=MAX_NUM_SAMPLES)
        params = req.sampling_params
        room = cfg.max_seq_len - n_prompt
        if params.max_tokens is None:
            max_tokens = min(DEFAULT_MAX_TOKENS, room)
        else:
            max_tokens = _check_int(params.max_tokens, "sampling_params.max_tokens", low=0)
            if max_tokens > room:
                raise ApiError(
                    400,
                    f"sampling_params.max_tokens: {max_tokens} with a {n_prompt}-token prompt "
                    f"exceeds max_seq_len {cfg.max_seq_len}",
                    field="sampling_params.max_tokens",
                )
        temperature = _check_float(params.temperature, "sampling_params.temperature")
        if temperature < 0:
            raise ApiError(
                400, f"sampling_params.temperature: expected >= 0, got {temperature}",
                field="sampling_params.temperature",
            )  # fmt: skip
        top_p = _check_float(params.top_p, "sampling_params.top_p")
        if not 0 < top_p <= 1:
            raise ApiError(
                400, f"sampling_params.top_p: expected a value in (0, 1], got {top_p}",
                field="sampling_params.top_p",
            )  # fmt: skip
        top_k = _check_int(params.top_k, "sampling_params.top_k")
        if params.seed is not None:
            _check_int(params.seed, "sampling_params.seed", low=0, high=2**64 - 1)
        stops = _stop_sequences(params.stop, cfg.vocab_size, EOS_TOKEN_ID)
        for name in ("topk_prompt_logprobs", "topk_sample_logprobs", "prompt_alt_tokens_k"):
            value = _check_int(getattr(req, name), name, low=0)
            if value:
                raise ApiError(
                    400, f"{name}: {value} is not supported by the local backend (use 0)",
                    field=name,
                )  # fmt: skip
        if req.target_prompt_logprobs is not None:
            raise ApiError(
                400, "target_prompt_logprobs: not supported by the local backend",
                field="target_prompt_logprobs",
            )  # fmt: skip
        last_n = req.prompt_logprobs_last_n
        if last_n is not None:
            _check_int(last_n, "prompt_logprobs_last_n", low=0)
        job_args = dict(
            prompt=prompt.astype(np.int32), num_samples=req.num_samples, max_tokens=max_tokens,
            temperature=temperature, top_k=top_k, top_p=top_p, seed=params.seed,
            stop_token_seqs=stops,
            include_prompt_logprobs=bool(req.prompt_logprobs) or last_n is not None,
        )  # fmt: skip
        request_id = _new_request_id()
        base = sampler.sampler_id or sampler.base_model
        seq = req.seq_id if req.seq_id is not None else request_id[:8]
        sequence_ids = [f"{base}:{seq}:{i}" for i in range(req.num_samples)]

        def run() -> SampleResponse:
            snapshot = self._snapshot(sampler)
            out = self.runtime(sampler.base_model).sample(
                SampleJob(snapshot=snapshot, **job_args)  # type: ignore[arg-type]
            )
            prompt_lp = out.prompt_logprobs
            if prompt_lp is not None and last_n is not None:
                prompt_lp = prompt_lp.copy()
                prompt_lp[: max(n_prompt - last_n, 0)] = np.nan
            return SampleResponse(
                sequences=[
                    SampledSequence(
                        stop_reason=s.stop_reason, tokens_np=s.tokens, logprobs_np=s.logprobs,
                        sequence_id=sequence_ids[i],
                    )
                    for i, s in enumerate(out.sequences)
                ],
                prompt_logprobs_np=prompt_lp,
            )

        self.scheduler.submit(Job(request_id, "sample", run=run))
        return UntypedAPIFuture(request_id=request_id, sample_sequence_ids=sequence_ids)

    def _snapshot(self, sampler: SamplerRecord) -> AdapterSnapshot | None:
        """The sampler's weights (worker thread; saved weights are read once and cached)."""
        if sampler.snapshot is not None or sampler.model_path is None:
            return sampler.snapshot
        from safetensors.numpy import load_file

        folder, _ = self.store.checkpoint_dir(sampler.model_path)
        rt = self.runtime(sampler.base_model)
        if (folder / PEFT_FILE).is_file():
            tensors = load_file(str(folder / PEFT_FILE))
            config = json.loads((folder / PEFT_CONFIG_FILE).read_text())
            snapshot = rt.snapshot_from_peft(tensors, config)
        else:  # a training checkpoint: its LoRA weights, loaded into a scratch adapter
            _, meta = self.store.checkpoint_dir(sampler.model_path)
            scratch = f"__sampler__:{uuid.uuid4().hex}"
            record = ModelRecord(
                model_id=scratch, base_model=sampler.base_model, rank=int(meta["lora_rank"]),
                seed=meta.get("seed"), train_attn=bool(meta.get("train_attn", True)),
                train_mlp=bool(meta.get("train_mlp", True)),
                train_unembed=bool(meta.get("train_unembed", True)), session_id=None,
            )  # fmt: skip
            state = _load_state(folder)
            rt.import_state(
                scratch, state, info=self._adapter_info(record), include_optimizer=False
            )
            try:
                snapshot = rt.snapshot(scratch)
            finally:
                rt.remove_adapter(scratch)
        if sampler.sampler_id:
            sampler.snapshot = snapshot
        return snapshot


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
