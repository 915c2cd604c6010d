"""The backend behind the HTTP routes: models, samplers, and the jobs the worker runs.

Handlers call the ``submit_*`` methods with decoded wire requests. Each validates the request
completely (so bad input is answered 4xx and changes nothing), registers what the client must
see at once (a model id, a sampler id), and queues a job whose ``run`` executes on the worker
thread, the only thread that touches a ``ModelRuntime``.

The class is assembled from private parts: ``_backend_models`` (presets, model registry,
``create_model``), ``_backend_training`` (``forward_backward``, ``optim_step``) and
``_backend_checkpoints`` (``save_weights``, ``load_weights``, ``unload_model``); records, limits
and request checks live in ``_backend_util``. Sampler weights and sampling stay here, next to
the :data:`MAX_SNAPSHOT_SAMPLERS` cap they share.
"""

from __future__ import annotations

import collections
import json
import threading
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from tinkjax.server._backend_checkpoints import _CheckpointsMixin
from tinkjax.server._backend_training import _TrainingMixin
from tinkjax.server._backend_util import (
    DEFAULT_MAX_TOKENS,
    MAX_NUM_SAMPLES,
    PEFT_CONFIG_FILE,
    PEFT_FILE,
    ModelRecord,
    SamplerRecord,
    _check_float,
    _check_int,
    _load_state,
    _new_request_id,
    _stop_sequences,
    _warmup,
)
from tinkjax.server._backend_util import STATE_FILE as STATE_FILE  # re-exported, as before
from tinkjax.server._errors import ApiError
from tinkjax.server._scheduler import Job, Scheduler
from tinkjax.server._store import CheckpointStore, validate_name
from tinkjax.types import (
    CreateSamplingSessionRequest,
    CreateSamplingSessionResponse,
    GetSamplerResponse,
    SampledSequence,
    SampleRequest,
    SampleResponse,
    SaveWeightsForSamplerRequest,
    SaveWeightsForSamplerResponseInternal,
    UntypedAPIFuture,
)

if TYPE_CHECKING:
    from tinkjax.models import AdapterSnapshot, ModelRuntime
    from tinkjax.server._futures import FutureTable

__all__ = ["Backend", "ModelRecord", "SamplerRecord"]

#: In-memory weight snapshots kept for unnamed sampler saves (oldest evicted first; RL loops
#: make one per iteration).
MAX_SNAPSHOT_SAMPLERS = 256


class Backend(_TrainingMixin, _CheckpointsMixin):
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

    # ----------------------------------------------------------------- sampler weights

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
            self._check_base_model(req.base_model, base_model, "the weights'")
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
                        stop_reason=s.stop_reason,
                        tokens_np=s.tokens,
                        logprobs_np=s.logprobs,
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
