"""Model lifecycle jobs: ``create_model``, ``load_weights`` (create-via-load or reload) and
``unload_model``."""

from __future__ import annotations

from dataclasses import dataclass

from tinkjax.server._errors import ApiError
from tinkjax.server._jobs import JobContext, Ordered, new_request_id
from tinkjax.server._models_registry import ModelRecord
from tinkjax.server._scheduler import Job
from tinkjax.server._validate import check_lora, check_user_metadata
from tinkjax.server._weights import load_state
from tinkjax.types import (
    CreateModelRequest,
    CreateModelResponse,
    DimuonOptimizerConfig,
    LoadWeightsRequest,
    LoadWeightsResponse,
    LoraConfig,
    UnloadModelRequest,
    UnloadModelResponse,
    UntypedAPIFuture,
)

__all__ = ["ModelJobs"]


@dataclass(frozen=True)
class ModelJobs:
    """Builds the jobs that create, reload and unload models (over the backend's :class:`JobContext`)."""

    ctx: JobContext

    def create_model(self, req: CreateModelRequest, digest: str) -> UntypedAPIFuture:
        """``/create_model``: a LoRA adapter ``{session_id}:train:{model_seq_id}``."""
        models = self.ctx.models
        model_id, existing = models.new_model_id(req.session_id, req.model_seq_id, digest)
        if existing is not None:
            return UntypedAPIFuture(request_id=existing, model_id=model_id)
        models.config(req.base_model)
        if isinstance(req.optimizer_config, DimuonOptimizerConfig):
            raise ApiError(
                400, "optimizer_config: only adamw is supported by the local backend",
                field="optimizer_config",
            )  # fmt: skip
        lora = req.lora_config if req.lora_config is not None else LoraConfig(rank=32)
        check_lora(lora)
        check_user_metadata(req.user_metadata)
        record = ModelRecord(
            model_id=model_id, base_model=req.base_model, rank=lora.rank, seed=lora.seed,
            train_attn=lora.train_attn, train_mlp=lora.train_mlp,
            train_unembed=lora.train_unembed, session_id=req.session_id,
            user_metadata=req.user_metadata,
        )  # fmt: skip

        def run() -> CreateModelResponse:
            try:
                rt = models.runtime(record.base_model)
                rt.create_adapter(
                    model_id, rank=record.rank, seed=record.seed, train_attn=record.train_attn,
                    train_mlp=record.train_mlp, train_unembed=record.train_unembed,
                )  # fmt: skip
                record.seed = rt.adapter_info(model_id).seed
                models.ensure_run(record)
            except Exception:
                models.unregister(model_id)
                raise
            return CreateModelResponse(model_id=model_id)

        target = Ordered(record, 0, digest, None)
        return self.ctx.submit_new_model(self.ctx.job("create_model", target, run=run), target)

    def load_weights(self, req: LoadWeightsRequest, digest: str) -> UntypedAPIFuture:
        """``/load_weights``: create-via-load (session + model_seq_id) or legacy reload."""
        models = self.ctx.models
        if req.session_id is not None and req.model_seq_id is not None:
            model_id, existing = models.new_model_id(req.session_id, req.model_seq_id, digest)
            if existing is not None:
                return UntypedAPIFuture(request_id=existing, model_id=model_id)
            reload: Ordered | None = None
        elif req.model_id is not None:
            reload = self.ctx.ordered(req.model_id, req.seq_id, digest)
            if (repeat := reload.repeat()) is not None:
                return repeat
            model_id = reload.model_id
        else:
            raise ApiError(
                400, "load_weights needs session_id and model_seq_id, or model_id",
                field="model_id",
            )  # fmt: skip
        check_user_metadata(req.user_metadata)
        _, meta, kind = models.checkpoint(req.path)
        if kind != "weights":
            raise ApiError(
                400,
                f"path: {req.path!r} is a {kind} checkpoint; load_weights needs a weights/ "
                "checkpoint (from save_state / save_weights)",
                field="path",
            )
        base_model = str(meta.get("base_model"))
        models.check_base_model(req.base_model, base_model, "the checkpoint's")
        models.config(base_model, field="path")
        if reload is None:
            record = ModelRecord.from_meta(
                model_id, meta, session_id=req.session_id, user_metadata=req.user_metadata
            )
            target = Ordered(record, 0, digest, None)
        else:
            record, target = reload.record, reload
            if base_model != record.base_model or int(meta["lora_rank"]) != record.rank:
                raise ApiError(
                    400,
                    f"path: checkpoint of {base_model!r} rank {meta['lora_rank']} does not fit "
                    f"model {model_id!r} ({record.base_model!r} rank {record.rank})",
                    field="path",
                )
        path, optimizer, create = req.path, bool(req.optimizer), reload is None

        def run() -> LoadWeightsResponse:
            try:
                # Looked up again: a save queued before this request may have replaced the
                # version (and removed its folder) since the request was checked.
                current, _, _ = models.checkpoint(path)
                rt = models.runtime(record.base_model)
                rt.import_state(
                    model_id, load_state(current), info=record.adapter_info(),
                    include_optimizer=optimizer,
                )  # fmt: skip
                if create:
                    models.ensure_run(record)
            except Exception:
                if create:
                    models.unregister(model_id)
                raise
            return LoadWeightsResponse(path=path, model_id=model_id, type="load_weights")

        job = self.ctx.job("load_weights", target, run=run)
        return self.ctx.submit_new_model(job, target) if create else self.ctx.submit(job, target)

    def unload_model(self, req: UnloadModelRequest) -> UntypedAPIFuture:
        """``/unload_model``: frees the adapter once the model's queued requests ran."""
        record = self.ctx.models.get(req.model_id)
        return UntypedAPIFuture(request_id=self.free(record), model_id=record.model_id)

    def free(self, record: ModelRecord) -> str:
        """Queue the job that frees a model's adapter and forgets the model (its saved
        checkpoints stay); returns the job's request id."""
        models, model_id = self.ctx.models, record.model_id

        def run() -> UnloadModelResponse:
            rt = models.runtime(record.base_model)
            if rt.has_adapter(model_id):
                rt.remove_adapter(model_id)
            models.unregister(model_id)
            return UnloadModelResponse(model_id=model_id, type="unload_model")

        return self.ctx.scheduler.submit(Job(new_request_id(), "unload_model", run=run))
