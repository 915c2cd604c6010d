"""Sampling: ``create_sampling_session`` and ``/asample`` jobs.

A sample job runs in pieces of at most :data:`SAMPLE_ROWS_PER_TURN` samples, each one turn of
its session's scheduler lane (``Scheduler`` round-robins the lanes), so a large request from
one session does not hold the worker while another session's small request waits. Pieces
share the request's seed and row numbering, so the samples equal those of one call.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from tinkjax.server._errors import ApiError
from tinkjax.server._jobs import JobContext, new_request_id
from tinkjax.server._samplers import SamplerRecord
from tinkjax.server._scheduler import Job, Resume
from tinkjax.server._validate import check_int, sample_plan
from tinkjax.types import (
    CreateSamplingSessionRequest,
    CreateSamplingSessionResponse,
    SampledSequence,
    SampleRequest,
    SampleResponse,
    UntypedAPIFuture,
)

if TYPE_CHECKING:
    from tinkjax.models import AdapterSnapshot

__all__ = ["SAMPLE_ROWS_PER_TURN", "SamplingJobs"]

#: Samples one turn of the worker computes for a request (the rest waits for its next turn).
#: Sampling is one decode loop over every row, so a piece costs about its share of the
#: request; the pieces repeat the prompt's prefill (small next to the decode).
SAMPLE_ROWS_PER_TURN = 16


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

        job = plan.job
        if job.seed is None and job.num_samples > SAMPLE_ROWS_PER_TURN:
            # One seed for every piece: the same samples as one call would give.
            job = dataclasses.replace(job, seed=int.from_bytes(os.urandom(4), "little"))
        sequences: list[SampledSequence] = []
        prompt_lp: list[np.ndarray | None] = [None]
        snapshot: list[AdapterSnapshot | None] = [None]

        def piece(start: int) -> SampleResponse | Resume:
            """Samples ``start`` up to the next ``SAMPLE_ROWS_PER_TURN``; the rest later."""
            from tinkjax.models import NonFiniteResultError

            n = min(SAMPLE_ROWS_PER_TURN, job.num_samples - start)
            if start == 0:  # the weights are read once: every piece samples the same ones
                snapshot[0] = samplers.snapshot(sampler)
            part = dataclasses.replace(
                job, snapshot=snapshot[0], num_samples=n, row_offset=start,
                include_prompt_logprobs=job.include_prompt_logprobs and start == 0,
            )  # fmt: skip
            try:
                out = models.runtime(sampler.base_model).sample(part)
            except NonFiniteResultError as exc:
                raise ApiError(400, str(exc), field="sampling_session_id") from None
            if start == 0:
                prompt_lp[0] = out.prompt_logprobs
            for i, s in enumerate(out.sequences):
                seq_id = sequence_ids[start + i]
                sequences.append(SampledSequence(
                    stop_reason=s.stop_reason, tokens_np=s.tokens, logprobs_np=s.logprobs,
                    sequence_id=seq_id,
                ))  # fmt: skip
            if start + n < job.num_samples:
                return Resume(lambda: piece(start + n))
            lp = prompt_lp[0]
            if lp is not None and plan.last_n is not None:
                lp = lp.copy()
                lp[: max(plan.n_prompt - plan.last_n, 0)] = np.nan
            return SampleResponse(sequences=sequences, prompt_logprobs_np=lp)

        run = functools.partial(piece, 0)
        self.ctx.scheduler.submit(Job(request_id, "sample", run=run, lane=sampler.lane))
        return UntypedAPIFuture(request_id=request_id, sample_sequence_ids=sequence_ids)
