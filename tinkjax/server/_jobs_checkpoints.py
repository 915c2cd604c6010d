"""Checkpoint jobs: ``save_weights`` (training state), ``save_weights_for_sampler`` (a named
PEFT checkpoint, or an unnamed in-memory snapshot behind a new sampling session) and
``save_weights_external`` (a PEFT adapter to download, optionally age-encrypted)."""

from __future__ import annotations

from dataclasses import dataclass

from tinkjax.server._age import AGE_SUFFIX, parse_recipients
from tinkjax.server._errors import ApiError
from tinkjax.server._jobs import JobContext
from tinkjax.server._samplers import SamplerRecord
from tinkjax.server._store import UnknownCheckpointError, validate_name
from tinkjax.server._validate import check_int, check_ttl, check_user_metadata
from tinkjax.server._weights import peft_files, state_files
from tinkjax.types import (
    SaveWeightsExternalRequest,
    SaveWeightsExternalResponseInternal,
    SaveWeightsForSamplerRequest,
    SaveWeightsForSamplerResponseInternal,
    SaveWeightsRequest,
    SaveWeightsResponse,
    UntypedAPIFuture,
)

__all__ = ["CheckpointJobs"]


@dataclass(frozen=True)
class CheckpointJobs:
    """Builds the jobs that save a model's weights (over the backend's :class:`JobContext`)."""

    ctx: JobContext

    def _check_free(
        self, model_id: str, kind: str, name: str, overwrite: bool, *, can_overwrite: bool = True
    ) -> None:
        """400 when the checkpoint exists and may not be replaced (worker thread)."""
        if overwrite:
            return
        try:
            self.ctx.store.checkpoints.get(model_id, f"{kind}/{name}")
        except UnknownCheckpointError:
            return
        path = f"tinker://{model_id}/{kind}/{name}"
        if kind == "weights":
            hint = "save_state(name, overwrite=True) replaces it"
        elif can_overwrite:
            hint = (
                "save_weights_for_sampler has no overwrite: choose another name, or delete it "
                f"first with RestClient.delete_checkpoint_from_tinker_path({path!r})"
            )
        else:
            hint = "choose another name"
        raise ApiError(400, f"path: checkpoint {path} already exists ({hint})", field="path")

    def save_weights(self, req: SaveWeightsRequest, digest: str) -> UntypedAPIFuture:
        """``/save_weights``: LoRA weights and Adam state as ``weights/<name>``."""
        target = self.ctx.ordered(req.model_id, req.seq_id, digest)
        if (repeat := target.repeat()) is not None:
            return repeat
        name = validate_name(
            req.path if req.path is not None else f"step-{target.seq_id}", field="path"
        )
        check_ttl(req.ttl_seconds)
        check_user_metadata(req.user_metadata)
        record, store, models = target.record, self.ctx.store, self.ctx.models

        def run() -> SaveWeightsResponse:
            self._check_free(record.model_id, "weights", name, req.overwrite)
            rt = models.runtime(record.base_model)
            state = rt.export_state(record.model_id, include_optimizer=True)
            ck = store.checkpoints.save(
                record.model_id, "weights", name, state_files(state),
                meta=record.checkpoint_meta(has_optimizer=True),
                user_metadata=req.user_metadata, ttl_seconds=req.ttl_seconds,
            )  # fmt: skip
            return SaveWeightsResponse(path=ck.tinker_path, type="save_weights")

        return self.ctx.submit(self.ctx.job("save_weights", target, run=run), target)

    def save_weights_for_sampler(
        self, req: SaveWeightsForSamplerRequest, digest: str
    ) -> UntypedAPIFuture:
        """``/save_weights_for_sampler``: named → PEFT checkpoint; unnamed → sampling session."""
        target = self.ctx.ordered(req.model_id, req.seq_id, digest)
        if (repeat := target.repeat()) is not None:
            return repeat
        check_ttl(req.ttl_seconds)
        check_user_metadata(req.user_metadata)
        record, store, models = target.record, self.ctx.store, self.ctx.models
        if req.path is not None:
            name = validate_name(req.path, field="path")

            def run_named() -> SaveWeightsForSamplerResponseInternal:
                self._check_free(record.model_id, "sampler_weights", name, False)
                tensors, config = models.runtime(record.base_model).export_peft(record.model_id)
                ck = store.checkpoints.save(
                    record.model_id, "sampler_weights", name, peft_files(tensors, config),
                    meta=record.checkpoint_meta(), user_metadata=req.user_metadata,
                    ttl_seconds=req.ttl_seconds,
                )  # fmt: skip
                return SaveWeightsForSamplerResponseInternal(
                    path=ck.tinker_path, type="save_weights_for_sampler"
                )

            job = self.ctx.job("save_weights_for_sampler", target, run=run_named)
            return self.ctx.submit(job, target)
        if req.sampling_session_seq_id is None:
            raise ApiError(
                400,
                "path or sampling_session_seq_id: one is required (a named save needs path)",
                field="path",
            )
        check_int(req.sampling_session_seq_id, "sampling_session_seq_id", low=0)
        if record.session_id is None:
            raise ApiError(400, f"model {record.model_id!r} has no session", field="model_id")
        session_id = record.session_id
        sampler_id = f"{session_id}:sample:{req.sampling_session_seq_id}"
        samplers = self.ctx.samplers
        samplers.check_new(sampler_id)

        def run_unnamed() -> SaveWeightsForSamplerResponseInternal:
            snapshot = models.runtime(record.base_model).snapshot(record.model_id)
            samplers.add(
                SamplerRecord(sampler_id=sampler_id, base_model=record.base_model,
                              snapshot=snapshot),
                session_id=session_id,
            )  # fmt: skip
            return SaveWeightsForSamplerResponseInternal(
                sampling_session_id=sampler_id, type="save_weights_for_sampler"
            )

        job = self.ctx.job("save_weights_for_sampler", target, run=run_unnamed)
        return self.ctx.submit(job, target)

    def save_weights_external(
        self, req: SaveWeightsExternalRequest, digest: str
    ) -> UntypedAPIFuture:
        """``/save_weights_external``: the adapter in PEFT layout (``adapter_model.safetensors``,
        ``adapter_config.json``) as ``external_weights/<name>``, every file encrypted to the
        ``age_encryption_recipients`` (and named ``<file>.age``) when there are any."""
        target = self.ctx.ordered(req.model_id, req.seq_id, digest)
        if (repeat := target.repeat()) is not None:
            return repeat
        name = validate_name(req.path, field="path")
        check_ttl(req.ttl_seconds)
        recipients = parse_recipients(req.age_encryption_recipients)
        record, store, models = target.record, self.ctx.store, self.ctx.models

        def run() -> SaveWeightsExternalResponseInternal:
            self._check_free(record.model_id, "external_weights", name, False, can_overwrite=False)
            tensors, config = models.runtime(record.base_model).export_peft(record.model_id)
            files = peft_files(tensors, config)
            if recipients is not None:
                files = {
                    f"{rel}{AGE_SUFFIX}": recipients.encrypt(data) for rel, data in files.items()
                }
            meta = {**record.checkpoint_meta(), "encrypted": recipients is not None}
            ck = store.checkpoints.save(
                record.model_id, "external_weights", name, files, meta=meta,
                ttl_seconds=req.ttl_seconds,
            )  # fmt: skip
            return SaveWeightsExternalResponseInternal(
                path=ck.tinker_path, size_bytes=ck.size_bytes, type="save_weights_external"
            )

        return self.ctx.submit(self.ctx.job("save_weights_external", target, run=run), target)
