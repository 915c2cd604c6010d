"""Model registry of the backend: presets, model records, runtimes and ``create_model``."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from tinkjax.server._backend_util import (
    ModelRecord,
    _check_int,
    _new_request_id,
)
from tinkjax.server._errors import ApiError
from tinkjax.server._scheduler import Job, Scheduler
from tinkjax.server._store import CheckpointStore
from tinkjax.types import (
    CreateModelRequest,
    CreateModelResponse,
    DimuonOptimizerConfig,
    GetInfoResponse,
    LoraConfig,
    ModelData,
    SupportedModel,
    UntypedAPIFuture,
)

if TYPE_CHECKING:
    from tinkjax.models import AdapterInfo, ModelConfig, ModelRuntime


class _ModelsBase:
    """Base of :class:`~tinkjax.server._backend.Backend`: served presets, live models, runtimes.

    The attributes are set by ``Backend.__init__``; the training and checkpoint parts build on
    the lookups and registration helpers here.
    """

    store: CheckpointStore
    scheduler: Scheduler
    allowed_models: tuple[str, ...] | None
    _lock: threading.RLock
    _models: dict[str, ModelRecord]
    _runtimes: dict[str, ModelRuntime]

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
                f"{field}: unknown base model {base_model!r}; this server serves {sorted(presets)}",
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
                arch="bytelm",
                model_name=record.base_model,
                tokenizer_id=ByteTokenizer.name_or_path,
            ),
            is_lora=True,
            lora_rank=record.rank,
            model_name=record.base_model,
            type="get_info",
        )

    def _require_session(self, session_id: str) -> None:
        if not self.store.has_session(session_id):
            raise ApiError(404, f"session_id: unknown session {session_id!r}", field="session_id")

    def _new_model_id(
        self, session_id: str, model_seq_id: int, digest: str
    ) -> tuple[str, str | None]:
        """``(model_id, request_id)`` of a model created in ``session_id`` as its
        ``model_seq_id``-th: ``request_id`` answers a repeat of the same creating request
        (else ``None``); a different request for an existing model is a 400."""
        self._require_session(session_id)
        _check_int(model_seq_id, "model_seq_id", low=0)
        model_id = f"{session_id}:train:{model_seq_id}"
        existing = self.scheduler.lookup(model_id, 0, digest)
        if existing is None and (
            self.scheduler.known_model(model_id) or self.store.has_training_run(model_id)
        ):
            raise ApiError(
                400, f"model_seq_id: model {model_id!r} already exists", field="model_seq_id"
            )
        return model_id, existing

    @staticmethod
    def _check_base_model(requested: str | None, actual: str, of: str) -> None:
        """400 unless ``requested`` (when given) is ``actual``, the base model named by ``of``
        (a possessive, e.g. ``"the checkpoint's"``)."""
        if requested is not None and requested != actual:
            raise ApiError(
                400,
                f"base_model: {requested!r} does not match {of} {actual!r}",
                field="base_model",
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
        model_id, existing = self._new_model_id(req.session_id, req.model_seq_id, digest)
        if existing is not None:
            return UntypedAPIFuture(request_id=existing, model_id=model_id)
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
        return self._submit_new_model(job, record, digest)

    def _submit_new_model(self, job: Job, record: ModelRecord, digest: str) -> UntypedAPIFuture:
        """Registers ``record`` and submits the job that creates it (the model's first
        ``seq_id``); a refused submission leaves no model behind."""
        self._register(record)
        try:
            request_id = self.scheduler.submit(job, digest=digest, register_next_seq=0)
        except Exception:
            with self._lock:
                self._models.pop(record.model_id, None)
            raise
        return UntypedAPIFuture(request_id=request_id, model_id=record.model_id)

    def _ordered(
        self, model_id: str, seq_id: Any, digest: str
    ) -> tuple[ModelRecord, int | None, str | None]:
        """Common checks of an ordered request: the model, the seq id, a duplicate's id."""
        record = self.model(model_id)
        if seq_id is None:
            return record, None, None
        _check_int(seq_id, "seq_id", low=0)
        return record, seq_id, self.scheduler.lookup(model_id, seq_id, digest)

    def _submit_ordered(self, job: Job, record: ModelRecord, digest: str) -> UntypedAPIFuture:
        request_id = self.scheduler.submit(job, digest=digest)
        return UntypedAPIFuture(request_id=request_id, model_id=record.model_id)
