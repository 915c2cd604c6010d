"""Training jobs of the backend: ``forward_backward`` / ``forward`` (fused) and ``optim_step``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from tinkjax.server._backend_models import _ModelsBase
from tinkjax.server._backend_util import (
    _ADAM_KEYS,
    ModelRecord,
    _check_float,
    _fwdbwd_output,
    _new_request_id,
)
from tinkjax.server._errors import ApiError
from tinkjax.server._scheduler import FusedWork, Job
from tinkjax.types import (
    AdamParams,
    Datum,
    ForwardBackwardRequest,
    ForwardRequest,
    OptimStepRequest,
    OptimStepResponse,
    UntypedAPIFuture,
)


class _TrainingMixin(_ModelsBase):
    """Forward/backward requests (fused by the scheduler across models) and optimizer steps."""

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
                [f.item for f in fused],  # type: ignore[union-attr]
                forward_only=forward_only,
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
                    400,
                    f"adam_params.{key}: expected >= 0, got {value}",
                    field=f"adam_params.{key}",
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
