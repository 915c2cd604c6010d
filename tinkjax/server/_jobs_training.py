"""Training jobs: ``forward_backward`` / ``forward`` (fused across models) and ``optim_step``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tinkjax.server._custom_graphs import CustomLosses, custom_item
from tinkjax.server._errors import ApiError
from tinkjax.server._jobs import JobContext
from tinkjax.server._scheduler import FusedWork, Job
from tinkjax.server._validate import adam_hyper, fwdbwd_item, server_filled_inputs
from tinkjax.types import (
    ForwardBackwardOutput,
    ForwardBackwardRequest,
    ForwardRequest,
    OptimStepRequest,
    OptimStepResponse,
    TensorData,
    UntypedAPIFuture,
)

__all__ = ["TrainingJobs"]


def _output(result: Any) -> ForwardBackwardOutput:
    """A runtime ``FwdBwdResult`` on the wire."""
    return ForwardBackwardOutput(
        loss_fn_output_type="ArrayRecord",
        loss_fn_outputs=[
            {name: TensorData.from_numpy(arr) for name, arr in outputs.items()}
            for outputs in result.outputs
        ],
        metrics=dict(result.metrics),
    )


def _refused(result: Any) -> ApiError:
    """A runtime item refused for a non-finite result, as the request's error."""
    return ApiError(
        400,
        f"refused, a non-finite result: {result.refused}; nothing was accumulated and the "
        "model is unchanged",
        field="data",
    )


@dataclass(frozen=True)
class TrainingJobs:
    """Builds forward/backward and optimizer-step jobs (over the backend's :class:`JobContext`)."""

    ctx: JobContext
    custom_losses: CustomLosses

    def forward_backward(
        self, req: ForwardBackwardRequest | ForwardRequest, digest: str
    ) -> UntypedAPIFuture:
        """``/forward_backward`` (protobuf or JSON) and JSON-era ``/forward``."""
        forward_only = isinstance(req, ForwardRequest)
        fb = req.forward_input if isinstance(req, ForwardRequest) else req.forward_backward_input
        target = self.ctx.ordered(req.model_id, req.seq_id, digest)
        if (repeat := target.repeat()) is not None:
            return repeat
        record = target.record
        cfg = self.ctx.models.config(record.base_model)
        if fb.loss_fn == "custom":  # a server-side custom loss of the model's session
            graph = self.custom_losses.lookup(fb.loss_fn_config, record.session_id)
            item = custom_item(cfg, record.model_id, fb.data, graph)
        else:
            data = fb.data
            if filled := server_filled_inputs(fb.loss_fn):
                # stable_reinforce: the sampler logprobs and mask come from the recorded sequences
                data = self.ctx.sequences.fill(record.session_id, data, filled)
            item = fwdbwd_item(cfg, record.model_id, data, fb.loss_fn, fb.loss_fn_config)
        work = FusedWork(record.base_model, item, forward_only, runner=self.run_fused)
        job = self.ctx.job("forward" if forward_only else "forward_backward", target, fused=work)
        return self.ctx.submit(job, target)

    def run_fused(self, jobs: Sequence[Job]) -> list[Any]:
        """One runtime call for ``jobs`` (same base model and ``forward_only``).

        Every item was validated at the edge (datums against the model, loss and config), and
        each job's adapter is checked here, just before fusing; a job whose model is gone fails
        alone. So an exception from the fused call itself cannot be one request's bad input: it
        is a server fault, and every job of the batch fails with it (category ``server``). No
        job is re-run one by one to find a culprit — there is none to find, and re-running
        would double the work of a failing batch.
        """
        works = [j.fused for j in jobs if j.fused is not None]
        if len(works) != len(jobs):
            raise ValueError("run_fused: every job must carry fused work")
        rt = self.ctx.models.runtime(works[0].base_model)
        results: list[Any] = [None] * len(jobs)
        live: list[int] = []
        for i, work in enumerate(works):
            if rt.has_adapter(work.item.adapter_id):
                live.append(i)
            else:
                results[i] = ApiError(
                    404, f"model_id: model {work.item.adapter_id!r} was unloaded",
                    field="model_id",
                )  # fmt: skip
        if live:
            out = rt.forward_backward(
                [works[i].item for i in live], forward_only=works[0].forward_only
            )
            for i, result in zip(live, out, strict=True):
                results[i] = _output(result) if result.refused is None else _refused(result)
                graph = works[i].item.custom_loss
                if graph is not None and result.refused is None:
                    from tinkjax.models import custom_metrics

                    lps = [o["logprobs"] for o in result.outputs]
                    results[i].metrics.update(custom_metrics(graph, works[i].item.datums, lps))
        return results

    def optim_step(self, req: OptimStepRequest, digest: str) -> UntypedAPIFuture:
        """``/optim_step`` (AdamW only)."""
        target = self.ctx.ordered(req.model_id, req.seq_id, digest)
        if (repeat := target.repeat()) is not None:
            return repeat
        if req.optimizer_params is not None:
            raise ApiError(
                400, "optimizer_params: only adam_params (AdamW) is supported",
                field="optimizer_params",
            )  # fmt: skip
        hyper = adam_hyper(req.adam_params)
        record = target.record
        models = self.ctx.models

        def run() -> OptimStepResponse:
            from tinkjax.models import NonFiniteResultError

            try:
                metrics = models.runtime(record.base_model).optim_step(record.model_id, hyper)
            except NonFiniteResultError as exc:
                raise ApiError(400, str(exc), field="adam_params") from None
            return OptimStepResponse(metrics=metrics)

        return self.ctx.submit(self.ctx.job("optim_step", target, run=run), target)
