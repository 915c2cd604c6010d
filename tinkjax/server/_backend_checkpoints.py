"""Checkpoint jobs of the backend: ``save_weights``, ``load_weights`` and ``unload_model``."""

from __future__ import annotations

from typing import Any

import numpy as np

from tinkjax.server._backend_models import _ModelsBase
from tinkjax.server._backend_util import (
    STATE_FILE,
    ModelRecord,
    _check_int,
    _load_state,
    _new_request_id,
)
from tinkjax.server._errors import ApiError
from tinkjax.server._scheduler import Job
from tinkjax.server._store import validate_name
from tinkjax.types import (
    LoadWeightsRequest,
    LoadWeightsResponse,
    SaveWeightsRequest,
    SaveWeightsResponse,
    UnloadModelRequest,
    UnloadModelResponse,
    UntypedAPIFuture,
    parse_tinker_path,
)


class _CheckpointsMixin(_ModelsBase):
    """Saving and loading training checkpoints, resolving tinker paths, unloading models."""

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
            model_id, existing = self._new_model_id(req.session_id, req.model_seq_id, digest)
            if existing is not None:
                return UntypedAPIFuture(request_id=existing, model_id=model_id)
            seq_id: int | None = 0
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
        self._check_base_model(req.base_model, base_model, "the checkpoint's")
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
        return self._submit_new_model(job, record, digest)

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
