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
from tinkjax.server._sequences import session_of_sampler
from tinkjax.server._validate import SamplePlan, check_int, sample_plan
from tinkjax.types import (
    CreateSamplingSessionRequest,
    CreateSamplingSessionResponse,
    SampledSequence,
    SampleRequest,
    SampleResponse,
    TopkLogprobs,
    UntypedAPIFuture,
)

if TYPE_CHECKING:
    from tinkjax.models import AdapterSnapshot

__all__ = ["SAMPLE_ROWS_PER_TURN", "SamplingJobs"]

#: Samples one turn of the worker computes for a request (the rest waits for its next turn).
#: Sampling is one decode loop over every row, so a piece costs about its share of the
#: request; the pieces repeat the prompt's prefill (small next to the decode).
SAMPLE_ROWS_PER_TURN = 16

#: Token id and logprob of an empty top-k cell (the official SDK reads a row starting with
#: them as "not computed", ``None``).
TOPK_EMPTY_ID, TOPK_EMPTY_LOGPROB = 0, -99999.0


def _last_n(values: np.ndarray | None, plan: SamplePlan, fill: float) -> np.ndarray | None:
    """``values`` (rows per prompt position) with the rows before the last ``last_n`` set to
    ``fill`` (``prompt_logprobs_last_n``)."""
    if values is None or plan.last_n is None:
        return values
    out = values.copy()
    out[: max(plan.n_prompt - plan.last_n, 0)] = fill
    return out


def _topk(topk: tuple[np.ndarray, np.ndarray] | None, plan: SamplePlan) -> TopkLogprobs | None:
    """The runtime's ``[n_prompt, k]`` top-k ids and logprobs on the wire: row 0 (no context)
    and rows before ``prompt_logprobs_last_n`` hold the empty-cell sentinels."""
    if topk is None:
        return None
    ids, lps = topk
    n, k = lps.shape
    if plan.last_n is not None:
        ids, lps = ids.copy(), lps.copy()
        ids[: max(plan.n_prompt - plan.last_n, 0)] = TOPK_EMPTY_ID
        lps[: max(plan.n_prompt - plan.last_n, 0)] = TOPK_EMPTY_LOGPROB
    return TopkLogprobs(token_ids=ids, logprobs=lps, k=k, length=n)


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
        cfg = models.config(sampler.base_model)
        plan = sample_plan(req, cfg, models.tokenizer(sampler.base_model) if cfg.source else None)
        request_id = new_request_id()
        base = sampler.sampler_id or sampler.base_model
        seq = req.seq_id if req.seq_id is not None else "-"
        # unique per submission: a retried request (same seq_id) names new sequences
        sequence_ids = [f"{base}:{seq}:{request_id[:12]}:{i}" for i in range(req.num_samples)]
        record_session = None
        if req.record_stability_info:
            record_session = session_of_sampler(sampler.sampler_id)
            if record_session is None:
                raise ApiError(
                    400,
                    "record_stability_info: recorded sequences belong to a session; sample "
                    "through a sampling_session_id (a sampling client of a session)",
                    field="record_stability_info",
                )
        records = self.ctx.sequences

        job = plan.job
        if job.seed is None and job.num_samples > SAMPLE_ROWS_PER_TURN:
            # One seed for every piece: the same samples as one call would give.
            job = dataclasses.replace(job, seed=int.from_bytes(os.urandom(4), "little"))
        sequences: list[SampledSequence] = []
        prompt_lp: list[np.ndarray | None] = [None]
        prompt_topk: list[tuple[np.ndarray, np.ndarray] | None] = [None]
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
                topk_prompt_logprobs=job.topk_prompt_logprobs if start == 0 else 0,
            )  # fmt: skip
            try:
                out = models.runtime(sampler.base_model).sample(part)
            except NonFiniteResultError as exc:
                raise ApiError(400, str(exc), field="sampling_session_id") from None
            if start == 0:
                prompt_lp[0] = out.prompt_logprobs
                prompt_topk[0] = out.prompt_topk
            for i, s in enumerate(out.sequences):
                seq_id = sequence_ids[start + i]
                sequences.append(SampledSequence(
                    stop_reason=s.stop_reason, tokens_np=s.tokens, logprobs_np=s.logprobs,
                    sequence_id=seq_id,
                ))  # fmt: skip
            if record_session is not None:
                records.record(
                    record_session, job.prompt,
                    [(sequence_ids[start + i], s.tokens, s.logprobs)
                     for i, s in enumerate(out.sequences)],
                )  # fmt: skip
            if start + n < job.num_samples:
                return Resume(lambda: piece(start + n))
            return SampleResponse(
                sequences=sequences,
                prompt_logprobs_np=_last_n(prompt_lp[0], plan, np.nan),
                topk_prompt_logprobs_np=_topk(prompt_topk[0], plan),
            )

        run = functools.partial(piece, 0)
        self.ctx.scheduler.submit(Job(request_id, "sample", run=run, lane=sampler.lane))
        return UntypedAPIFuture(request_id=request_id, sample_sequence_ids=sequence_ids)
