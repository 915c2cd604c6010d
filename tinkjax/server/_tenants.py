"""Tenant isolation: what a request names must belong to the tenant that sends it.

Every object belongs to the tenant (:func:`tinkjax.server._auth.tenant_id`) whose key created
it: a session directly (its ``tenant`` column); its models, training runs, checkpoints and
samplers through the session; a future through the request that created it (claimed when the
request is answered); a telemetry event through the request that posted it.

:class:`Tenancy` runs before the backend sees a request: every id the request names (a session,
model, sampler, checkpoint path or future) that is not the tenant's — another tenant's or no
one's — is answered with the very 404 the backend gives an unknown id, so a response never tells
an id of another tenant from one that does not exist.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from tinkjax.server._futures import FutureTable
from tinkjax.server._models_registry import (
    ModelRegistry,
    no_checkpoint,
    unknown_model,
    unknown_session,
)
from tinkjax.server._samplers import unknown_sampler
from tinkjax.server._store import (
    Store,
    UnknownCheckpointError,
    UnknownSessionError,
    UnknownTrainingRunError,
    parse_checkpoint_id,
)
from tinkjax.types import (
    CopyWeightsRequest,
    CreateModelRequest,
    CreateSamplingSessionRequest,
    ForwardBackwardRequest,
    ForwardRequest,
    GetInfoRequest,
    LoadWeightsRequest,
    OptimStepRequest,
    SampleRequest,
    SaveWeightsForSamplerRequest,
    SaveWeightsRequest,
    SessionHeartbeatRequest,
    UnloadModelRequest,
    UntypedAPIFuture,
    WeightsInfoRequest,
    parse_tinker_path,
)

__all__ = ["Tenancy"]

#: Session owners remembered (a session never changes owner; beyond this the memo restarts).
_MEMO_SIZE = 65_536


class Tenancy:
    """Ownership checks over the backend's parts.

    Args:
        store: sessions (and their owners), runs, samplers.
        models: live training models (each names its session).
        futures: submitted requests' futures (each claimed by a tenant).
    """

    def __init__(self, store: Store, models: ModelRegistry, futures: FutureTable) -> None:
        self.store = store
        self.models = models
        self.futures = futures
        self._session_owner: dict[str, str] = {}
        self._checks: dict[type, Callable[[str, Any], None]] = {
            SessionHeartbeatRequest: lambda t, r: self.stored_session(t, r.session_id),
            CreateModelRequest: lambda t, r: self.session(t, r.session_id),
            LoadWeightsRequest: self._load_weights,
            CreateSamplingSessionRequest: self._create_sampling_session,
            SampleRequest: self._sample,
            WeightsInfoRequest: lambda t, r: self.checkpoint_path(t, r.tinker_path, "tinker_path"),
            CopyWeightsRequest: self._copy_weights,
        }
        for model_request in (
            GetInfoRequest, ForwardRequest, ForwardBackwardRequest, OptimStepRequest,
            SaveWeightsRequest, SaveWeightsForSamplerRequest, UnloadModelRequest,
        ):  # fmt: skip
            self._checks[model_request] = lambda t, r: self.model(t, r.model_id)

    # -- owners -------------------------------------------------------------------------

    def session_owner(self, session_id: Any) -> str | None:
        """The tenant of a session; ``None`` for an unknown one (or one no key owns)."""
        if not isinstance(session_id, str):
            return None
        owner = self._session_owner.get(session_id)
        if owner is None:
            owner = self.store.sessions.tenant_of(session_id)
            if owner is not None:
                if len(self._session_owner) >= _MEMO_SIZE:
                    self._session_owner.clear()
                self._session_owner[session_id] = owner
        return owner

    def model_owner(self, model_id: Any) -> str | None:
        """The tenant of a live model, else of a training run; ``None`` when unknown."""
        if not isinstance(model_id, str):
            return None
        record = self.models.peek(model_id)
        if record is None:  # not live: a training run of the store, or nothing
            return self.store.runs.tenant_of(model_id)
        return self.session_owner(record.session_id)

    # -- checks (each raises the backend's own 404 for an id that is not the tenant's) ----

    def session(self, tenant: str, session_id: Any) -> None:
        """A session named in a request body (``create_model``, ``load_weights``, ...)."""
        if self.session_owner(session_id) != tenant:
            raise unknown_session(session_id)

    def stored_session(self, tenant: str, session_id: Any) -> None:
        """A session the store looks up (heartbeat, ``/sessions/{id}``, finish)."""
        if self.session_owner(session_id) != tenant:
            raise UnknownSessionError(session_id)

    def model(self, tenant: str, model_id: Any) -> None:
        """A training model."""
        if self.model_owner(model_id) != tenant:
            raise unknown_model(model_id)

    def sampler(self, tenant: str, sampler_id: Any) -> None:
        """A sampling session."""
        owner = (
            self.store.sessions.sampler_tenant(sampler_id) if isinstance(sampler_id, str) else None
        )
        if owner != tenant:
            raise unknown_sampler(sampler_id)

    def checkpoint_path(self, tenant: str, path: Any, field: str) -> None:
        """A ``tinker://`` checkpoint path to read (a malformed one is left to the backend's
        400): the tenant's own, or one its owner published."""
        try:
            run_id = parse_tinker_path(path).training_run_id
        except ValueError:
            return
        if self.store.runs.tenant_of(run_id) != tenant and not self.store.checkpoints.is_public(
            path
        ):
            raise no_checkpoint(path, field)

    def run(self, tenant: str, run_id: str, checkpoint_id: str | None) -> None:
        """A REST resource ``/training_runs/{run_id}[/checkpoints[/{checkpoint_id}]]``.

        Raises:
            InvalidNameError: a malformed ``checkpoint_id`` (400, as for the tenant's own run).
        """
        if self.store.runs.tenant_of(run_id) == tenant:
            return
        if checkpoint_id is None:
            raise UnknownTrainingRunError(run_id)
        parse_checkpoint_id(checkpoint_id)
        raise UnknownCheckpointError(f"tinker://{run_id}/{checkpoint_id}")

    def future(self, tenant: str, request_id: Any) -> bool:
        """Whether the future ``request_id`` is the tenant's."""
        record = self.futures.get(request_id) if isinstance(request_id, str) else None
        return record is not None and record.owner == tenant

    def request(self, tenant: str, req: Any) -> None:
        """Every id a decoded request body names (a request type without its own check has its
        ``session_id`` and ``model_id`` checked, so a new endpoint is not left open)."""
        check = self._checks.get(type(req))
        if check is not None:
            check(tenant, req)
            return
        if getattr(req, "session_id", None) is not None:
            self.session(tenant, req.session_id)
        if getattr(req, "model_id", None) is not None:
            self.model(tenant, req.model_id)

    def path_params(self, tenant: str, params: Mapping[str, Any]) -> None:
        """The ids in a route's path (``/sessions/{session_id}``, ``/samplers/{sampler_id}``)."""
        if "session_id" in params:
            self.stored_session(tenant, params["session_id"])
        if "sampler_id" in params:
            self.sampler(tenant, params["sampler_id"])

    def claim(self, tenant: str, answer: Any) -> None:
        """Give the future an answer names (if any) to the tenant that asked."""
        if isinstance(answer, UntypedAPIFuture):
            self.futures.claim(answer.request_id, tenant)

    # -- requests whose ids depend on which form they take ---------------------------------

    def _load_weights(self, tenant: str, req: LoadWeightsRequest) -> None:
        if req.session_id is not None and req.model_seq_id is not None:
            self.session(tenant, req.session_id)
        elif req.model_id is not None:
            self.model(tenant, req.model_id)
        self.checkpoint_path(tenant, req.path, "path")

    def _copy_weights(self, tenant: str, req: CopyWeightsRequest) -> None:
        if req.session_id is not None:
            self.session(tenant, req.session_id)
        self.checkpoint_path(tenant, req.source_path, "source_path")

    def _create_sampling_session(self, tenant: str, req: CreateSamplingSessionRequest) -> None:
        self.session(tenant, req.session_id)
        if req.model_path is not None:
            self.checkpoint_path(tenant, req.model_path, "model_path")

    def _sample(self, tenant: str, req: SampleRequest) -> None:
        if req.sampling_session_id is not None:
            self.sampler(tenant, req.sampling_session_id)
        elif req.model_path is not None:
            self.checkpoint_path(tenant, req.model_path, "model_path")
