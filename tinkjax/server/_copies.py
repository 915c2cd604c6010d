"""``/copy_weights``: a checkpoint copied into a new training run of the caller.

As the service defines it: the copy keeps the source's kind (``weights`` or
``sampler_weights``) and name, belongs to a new training run that cannot be trained on (a run
with no live model), gets its own ``ttl_seconds`` (the source's expiry is not inherited) and is
private. The destination is a session and model slot of the caller (``session_id`` +
``model_seq_id``: the run is ``{session_id}:train:{model_seq_id}``) or a project
(``destination_project_id``: a new session of the caller, tagged with the project, holds the run
``{session}:train:0``). The local backend copies the files (the service shares its storage).

The source must be the caller's or published. A retry with the same ``X-Idempotency-Key`` and
body answers the first copy's path instead of copying again (remembered for the server's
lifetime, the last :data:`MAX_REMEMBERED` keys).
"""

from __future__ import annotations

import threading
import uuid
from collections import OrderedDict

from tinkjax.server._errors import ApiError
from tinkjax.server._models_registry import ModelRegistry, no_checkpoint
from tinkjax.server._store import Store, UnknownCheckpointError
from tinkjax.server._validate import check_int, check_tinker_path, check_ttl
from tinkjax.types import CopyWeightsRequest, CopyWeightsResponse, parse_tinker_path

__all__ = ["MAX_REMEMBERED", "WeightCopies"]

#: Idempotency keys remembered (per server; the oldest is forgotten first).
MAX_REMEMBERED = 4096
_COPYABLE = ("weights", "sampler_weights")


class WeightCopies:
    """Makes the copies of ``/copy_weights`` (worker thread: it writes files).

    Args:
        store: runs, sessions and checkpoints.
        models: live models (a destination slot holding one is taken).
    """

    def __init__(self, store: Store, models: ModelRegistry) -> None:
        self.store = store
        self.models = models
        self._lock = threading.Lock()
        self._done: OrderedDict[tuple[str, str], tuple[str, str]] = OrderedDict()

    def copy(
        self, req: CopyWeightsRequest, *, tenant: str, key: str | None, digest: str
    ) -> CopyWeightsResponse:
        """Copy ``req.source_path`` (ids already checked to be the tenant's or public).

        Raises:
            ApiError: 400 for a bad field (named), 404 for an unknown source, 409 for a taken
                destination or a reused idempotency key with another body.
        """
        if key is not None:
            with self._lock:
                seen = self._done.get((tenant, key))
            if seen is not None:
                if seen[0] != digest:
                    raise ApiError(
                        409,
                        f"X-Idempotency-Key {key!r} was used for another copy_weights request",
                    )
                return CopyWeightsResponse(tinker_path=seen[1])
        source = check_tinker_path(req.source_path, "source_path")
        kind = parse_tinker_path(source).kind
        if kind not in _COPYABLE:
            raise ApiError(
                400,
                f"source_path: {source!r} is a {kind} checkpoint; copy_weights copies weights/ "
                "and sampler_weights/ checkpoints",
                field="source_path",
            )
        check_ttl(req.ttl_seconds)
        if req.weights_access_token is not None:
            raise ApiError(
                400,
                "weights_access_token: the local backend has no access tokens; the owner "
                "publishes a checkpoint to let other keys copy it",
                field="weights_access_token",
            )
        try:
            info = self.store.checkpoints.weights_info(source)
        except UnknownCheckpointError:
            raise no_checkpoint(source, "source_path") from None
        session_id, model_id = self._destination(req, tenant)
        self.store.runs.add(
            model_id, base_model=info.base_model, is_lora=info.is_lora,
            lora_rank=info.lora_rank, session_id=session_id,
            user_metadata={"copied_from": source},
        )  # fmt: skip
        try:
            ck = self.store.checkpoints.copy(source, model_id, ttl_seconds=req.ttl_seconds)
        except UnknownCheckpointError:  # deleted or expired meanwhile
            raise no_checkpoint(source, "source_path") from None
        if key is not None:
            with self._lock:
                self._done[(tenant, key)] = (digest, ck.tinker_path)
                while len(self._done) > MAX_REMEMBERED:
                    self._done.popitem(last=False)
        return CopyWeightsResponse(tinker_path=ck.tinker_path)

    def _destination(self, req: CopyWeightsRequest, tenant: str) -> tuple[str, str]:
        """``(session_id, model_id)`` of the new run (a new session for a project)."""
        if req.session_id is not None or req.model_seq_id is not None:
            if req.session_id is None or req.model_seq_id is None:
                raise ApiError(
                    400,
                    "session_id and model_seq_id: give both (or destination_project_id)",
                    field="session_id" if req.session_id is None else "model_seq_id",
                )
            check_int(req.model_seq_id, "model_seq_id", low=0)
            model_id = f"{req.session_id}:train:{req.model_seq_id}"
            if self.models.peek(model_id) is not None or self.store.runs.has(model_id):
                raise ApiError(
                    409,
                    f"model_seq_id: training run {model_id!r} already exists",
                    field="model_seq_id",
                )
            return req.session_id, model_id
        project = req.destination_project_id
        if not isinstance(project, str) or not project:
            raise ApiError(
                400,
                "destination_project_id: give a project, or session_id and model_seq_id "
                f"(got {project!r})",
                field="destination_project_id",
            )
        session_id = str(uuid.uuid4())
        self.store.sessions.add(
            session_id, tags=[f"project:{project}"], user_metadata={"project_id": project},
            sdk_version="copy_weights", display_name=f"copy_weights into {project}",
            tenant=tenant,
        )  # fmt: skip
        return session_id, f"{session_id}:train:0"
