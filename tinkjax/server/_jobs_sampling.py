"""Sampling: ``create_sampling_session`` and ``/asample`` jobs."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from tinkjax.server._errors import ApiError
from tinkjax.server._jobs import JobContext, new_request_id
from tinkjax.server._samplers import SamplerRecord
from tinkjax.server._scheduler import Job
from tinkjax.server._validate import check_int, sample_plan
from tinkjax.types import (
    CreateSamplingSessionRequest,
    CreateSamplingSessionResponse,
    SampledSequence,
    SampleRequest,
    SampleResponse,
    UntypedAPIFuture,
)

__all__ = ["SamplingJobs"]


@dataclass(frozen=True)
class SamplingJobs:
    """Creates sampling sessions and builds sampling jobs (over the backend's :class:`JobContext`)."""

    ctx: JobContext

    def create_sampling_session(
        self, req: CreateSamplingSessionRequest
    ) -> CreateSamplingSessionResponse:
        """``/create_sampling_session`` from a base model or saved sampler weights."""
        models, samplers = self.ctx.models, self.ctx.samplers
        models.require_session(req.session_id)
        check_int(req.sampling_session_seq_id, "sampling_session_seq_id", low=0)
        sampler_id = f"{req.session_id}:sample:{req.sampling_session_seq_id}"
        if req.model_path is not None:
            _, meta, _ = models.checkpoint(req.model_path, field="model_path")
            base_model = str(meta.get("base_model"))
            models.check_base_model(req.base_model, base_model, "the weights'")
        elif req.base_model is not None:
            base_model = req.base_model
        else:
            raise ApiError(400, "base_model or model_path: one is required", field="base_model")
        models.config(base_model)
        samplers.check_new(sampler_id)
        samplers.add(
            SamplerRecord(sampler_id=sampler_id, base_model=base_model, model_path=req.model_path),
            session_id=req.session_id,
        )
        return CreateSamplingSessionResponse(sampling_session_id=sampler_id)

    def sample(self, req: SampleRequest) -> UntypedAPIFuture:
        """``/asample``: queue a sampling job; one sequence id per sample."""
        samplers = self.ctx.samplers
        sampler = samplers.for_request(req)
        models = self.ctx.models
        plan = sample_plan(req, models.config(sampler.base_model))
        request_id = new_request_id()
        base = sampler.sampler_id or sampler.base_model
        seq = req.seq_id if req.seq_id is not None else request_id[:8]
        sequence_ids = [f"{base}:{seq}:{i}" for i in range(req.num_samples)]

        def run() -> SampleResponse:
            from tinkjax.models import NonFiniteResultError

            job = dataclasses.replace(plan.job, snapshot=samplers.snapshot(sampler))
            try:
                out = models.runtime(sampler.base_model).sample(job)
            except NonFiniteResultError as exc:
                raise ApiError(400, str(exc), field="sampling_session_id") from None
            prompt_lp = out.prompt_logprobs
            if prompt_lp is not None and plan.last_n is not None:
                prompt_lp = prompt_lp.copy()
                prompt_lp[: max(plan.n_prompt - plan.last_n, 0)] = np.nan
            return SampleResponse(
                sequences=[
                    SampledSequence(
                        stop_reason=s.stop_reason,
                        tokens_np=s.tokens,
                        logprobs_np=s.logprobs,
                        sequence_id=sequence_ids[i],
                    )
                    for i, s in enumerate(out.sequences)
                ],
                prompt_logprobs_np=prompt_lp,
            )

        self.ctx.scheduler.submit(Job(request_id, "sample", run=run))
        return UntypedAPIFuture(request_id=request_id, sample_sequence_ids=sequence_ids)
