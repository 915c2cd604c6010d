"""REST resources of checkpoints: ``/training_runs/{run}[/checkpoints[/{kind}/{name}[/action]]]``
and the archive downloads its ``archive`` action redirects to.

The path is parsed once into a :class:`CheckpointPath`; the store work runs on a worker thread
(``run_in_threadpool``), never on the event loop.
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response

from tinkjax.codec import decode_json
from tinkjax.server._errors import ApiError
from tinkjax.server._http import allow, json_response, read_json_body
from tinkjax.server._store import Store

__all__ = ["ARCHIVE_LINK_TTL_S", "ArchiveLinks", "CheckpointPath", "CheckpointRoutes"]

#: How long an archive download link (the 302 target) stays valid.
ARCHIVE_LINK_TTL_S = 3600.0


class ArchiveLinks:
    """Download tokens: token → ``(model_id, checkpoint_id)``, valid :data:`ARCHIVE_LINK_TTL_S`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._links: dict[str, tuple[tuple[str, str], float]] = {}

    def new(self, model_id: str, checkpoint_id: str) -> str:
        """A fresh token for the checkpoint (expired tokens are dropped)."""
        token = secrets.token_urlsafe(16)
        with self._lock:
            now = time.time()
            self._links = {k: v for k, v in self._links.items() if now - v[1] <= ARCHIVE_LINK_TTL_S}
            self._links[token] = ((model_id, checkpoint_id), now)
        return token

    def target(self, token: str) -> tuple[str, str]:
        """The checkpoint of a live token; 404 otherwise."""
        with self._lock:
            target, created = self._links.get(token, (None, 0.0))
        if target is None or time.time() - created > ARCHIVE_LINK_TTL_S:
            raise ApiError(404, f"unknown or expired archive link {token!r}")
        return target


@dataclass(frozen=True)
class CheckpointPath:
    """A parsed ``/training_runs/...`` path.

    Attributes:
        run_id: the training run.
        checkpoint_id: ``<kind>/<name>``, or ``None`` for the run or its listing.
        listing: ``/checkpoints`` (the run's checkpoints) without a checkpoint id.
        action: ``""``, ``archive``, ``publish`` or ``ttl``.
    """

    run_id: str
    checkpoint_id: str | None
    listing: bool
    action: str

    @classmethod
    def parse(cls, rest: str, full_path: str) -> CheckpointPath:
        """The resource of ``rest`` (what follows ``/training_runs/``); 404 for other shapes."""
        parts = rest.split("/")
        if not parts[0]:
            raise ApiError(404, "training run id missing from the path")
        if len(parts) == 1:
            return cls(parts[0], None, False, "")
        if parts[1] != "checkpoints":
            raise ApiError(404, f"no route for {full_path}")
        if len(parts) == 2:
            return cls(parts[0], None, True, "")
        if len(parts) < 4:
            raise ApiError(
                404, f"checkpoint id must look like <kind>/<name>, got {'/'.join(parts[2:])!r}"
            )
        action = "/".join(parts[4:])
        if action not in ("", "archive", "publish", "ttl"):
            raise ApiError(404, f"no route for {full_path}")
        return cls(parts[0], f"{parts[2]}/{parts[3]}", True, action)


class CheckpointRoutes:
    """The handlers of the checkpoint REST resources.

    Args:
        store: where runs and checkpoints live.
        max_body_bytes: body limit of ``PUT .../ttl``.
    """

    def __init__(self, store: Store, *, max_body_bytes: int) -> None:
        self.store = store
        self.max_body_bytes = max_body_bytes
        self.links = ArchiveLinks()

    async def training_run_path(self, request: Request) -> Response:
        """``/training_runs/{run}[/checkpoints[/{kind}/{name}[/archive|publish|ttl]]]``."""
        target = CheckpointPath.parse(request.path_params["rest"], request.url.path)
        method = request.method
        ttl: Any = None
        if target.action == "ttl":
            allow(method, "PUT")
            raw = decode_json(await read_json_body(request, self.max_body_bytes), dict[str, Any])
            ttl = raw.get("ttl_seconds")
            if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int) or ttl < 1):
                raise ApiError(400, f"ttl_seconds: expected a positive int or null, got {ttl!r}")
        result = await run_in_threadpool(self._act, target, method, ttl)
        if target.action == "archive":
            expires = formatdate(time.time() + ARCHIVE_LINK_TTL_S, usegmt=True)
            return RedirectResponse(
                f"{request.base_url}api/v1/archives/{result}.tar.gz",
                status_code=302,
                headers={"Expires": expires},
            )
        return json_response(result)

    def _act(self, target: CheckpointPath, method: str, ttl: int | None) -> Any:
        """The store work of a checkpoint resource (worker thread)."""
        run_id, ck = target.run_id, target.checkpoint_id
        checkpoints = self.store.checkpoints
        if ck is None:
            allow(method, "GET")
            if target.listing:
                return checkpoints.of_run(run_id)
            return self.store.runs.get(run_id)
        if target.action == "":
            allow(method, "DELETE", "GET")
            if method == "GET":
                return checkpoints.get(run_id, ck)
            checkpoints.delete(run_id, ck)
            return {}
        if target.action == "archive":
            allow(method, "GET")
            checkpoints.get(run_id, ck)
            return self.links.new(run_id, ck)
        if target.action == "publish":
            allow(method, "POST", "DELETE")
            checkpoints.set_public(run_id, ck, method == "POST")
            return {}
        checkpoints.set_ttl(run_id, ck, ttl)  # action "ttl" (checked by the handler)
        return {}

    async def archive(self, request: Request) -> Response:
        """``GET /archives/{token}.tar.gz``: the checkpoint folder as a tar.gz."""
        model_id, checkpoint_id = self.links.target(request.path_params["token"])
        path = await run_in_threadpool(self.store.checkpoints.archive_path, model_id, checkpoint_id)
        name = checkpoint_id.replace("/", "-") + ".tar.gz"
        return FileResponse(path, media_type="application/gzip", filename=name)
