"""REST resources of checkpoints: ``/training_runs/{run}[/checkpoints[/{kind}/{name}[/action]]]``,
the archive downloads its ``archive`` action redirects to, the file downloads its
``external_weights_urls`` action signs (:mod:`tinkjax.server._links`), and ``/copy_weights``.

The path is parsed once into a :class:`CheckpointPath`; the store work runs on a worker thread
(``run_in_threadpool``), never on the event loop. A run of another tenant answers exactly as an
unknown one. The ``archive`` action redirects to a signed, short-lived download link
(:class:`~tinkjax.server._auth.ArchiveTokens`): the link itself is the credential, so the
download needs no key; when one is sent, it must be the owner's. The same holds for the
per-file links of ``external_weights_urls``.

``publish`` (POST) and unpublish (DELETE) answer 409 when the checkpoint already is public, or
private. A published checkpoint is readable by every tenant — loaded (``load_weights``), sampled
(``model_path``), described (``weights_info``) and copied (``copy_weights``) — while its run,
listing, deletion, TTL, publication and downloads stay its owner's.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import formatdate
from typing import Any, BinaryIO

import msgspec
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response, StreamingResponse

from tinkjax.codec import decode_json
from tinkjax.server._auth import API_KEY_HEADER, ArchiveTokens, KeyPolicy
from tinkjax.server._copies import WeightCopies
from tinkjax.server._errors import ApiError
from tinkjax.server._http import allow, digest, json_response, read_json_body
from tinkjax.server._links import DownloadLinks
from tinkjax.server._models_registry import ModelRegistry
from tinkjax.server._store import Store, UnknownCheckpointError, parse_checkpoint_id
from tinkjax.server._tenants import Tenancy
from tinkjax.types import CopyWeightsRequest, ExternalWeightsUrlsResponse

__all__ = ["CheckpointPath", "CheckpointRoutes"]


@dataclass(frozen=True)
class CheckpointPath:
    """A parsed ``/training_runs/...`` path.

    Attributes:
        run_id: the training run.
        checkpoint_id: ``<kind>/<name>``, or ``None`` for the run or its listing.
        listing: ``/checkpoints`` (the run's checkpoints) without a checkpoint id.
        action: ``""``, ``archive``, ``publish``, ``ttl`` or ``external_weights_urls``.
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
        if action not in ("", "archive", "publish", "ttl", "external_weights_urls"):
            raise ApiError(404, f"no route for {full_path}")
        return cls(parts[0], f"{parts[2]}/{parts[3]}", True, action)


class CheckpointRoutes:
    """The handlers of the checkpoint REST resources.

    Args:
        store: where runs and checkpoints live.
        tenancy: who owns which run.
        policy: the keys accepted (an archive download that sends one).
        tokens: signs and checks archive download links (its ``ttl_s`` is also the lifetime
            of the ``external_weights_urls`` links).
        max_body_bytes: body limit of ``PUT .../ttl`` and ``/copy_weights``.
        models: live models (``/copy_weights`` refuses a destination slot that holds one).
    """

    def __init__(
        self,
        store: Store,
        tenancy: Tenancy,
        *,
        policy: KeyPolicy,
        tokens: ArchiveTokens,
        max_body_bytes: int,
        models: ModelRegistry,
    ) -> None:
        self.store = store
        self.tenancy = tenancy
        self.policy = policy
        self.tokens = tokens
        self.links = DownloadLinks(ttl_s=tokens.ttl_s)
        self.copies = WeightCopies(store, models)
        self.max_body_bytes = max_body_bytes

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
        result = await run_in_threadpool(self._act, request.state.tenant, target, method, ttl)
        if target.action == "external_weights_urls":
            files, expires = result
            return json_response(
                ExternalWeightsUrlsResponse(
                    urls={rel: f"{request.base_url}api/v1/downloads/{tok}/{rel}"
                          for rel, tok in files.items()},
                    expires=datetime.fromtimestamp(expires, UTC),
                )
            )  # fmt: skip
        if target.action == "archive":
            token, expires = result
            return RedirectResponse(
                f"{request.base_url}api/v1/archives/{token}.tar.gz",
                status_code=302,
                headers={"Expires": formatdate(expires, usegmt=True)},
            )
        return json_response(result)

    def _act(self, tenant: str, target: CheckpointPath, method: str, ttl: int | None) -> Any:
        """The store work of a checkpoint resource (worker thread)."""
        run_id, ck = target.run_id, target.checkpoint_id
        self.tenancy.run(tenant, run_id, ck)
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
            return self.tokens.new(tenant, run_id, ck)
        if target.action == "publish":
            allow(method, "POST", "DELETE")
            if not checkpoints.set_public(run_id, ck, method == "POST"):
                state = "public" if method == "POST" else "private"
                raise ApiError(409, f"checkpoint tinker://{run_id}/{ck} already is {state}")
            return {}
        if target.action == "external_weights_urls":
            allow(method, "GET")
            return self._sign_files(tenant, run_id, ck)
        checkpoints.set_ttl(run_id, ck, ttl)  # action "ttl" (checked by the handler)
        return {}

    async def archive(self, request: Request) -> Response:
        """``GET /archives/{token}.tar.gz``: the checkpoint folder as a tar.gz."""
        token = request.path_params["token"]
        run_id = self.tokens.target(token)[0]
        owner = await run_in_threadpool(self.store.runs.tenant_of, run_id)
        model_id, checkpoint_id = self.tokens.verify(token, owner)
        if API_KEY_HEADER in request.headers and self.policy.tenant(request.headers) != owner:
            raise ApiError(404, "unknown or expired archive link")
        path = await run_in_threadpool(self.store.checkpoints.archive_path, model_id, checkpoint_id)
        name = checkpoint_id.replace("/", "-") + ".tar.gz"
        return FileResponse(path, media_type="application/gzip", filename=name)

    def _sign_files(self, tenant: str, run_id: str, ck: str) -> tuple[dict[str, str], int]:
        """A token per file of an ``external_weights`` checkpoint, and their expiry."""
        kind, _ = parse_checkpoint_id(ck)
        if kind != "external_weights":
            raise ApiError(
                400,
                f"checkpoint_id: {ck!r} is not an external_weights checkpoint; save one with "
                "save_weights_external",
                field="checkpoint_id",
            )
        version, files = self.store.checkpoints.files(run_id, ck)
        expires = self.links.expiry()
        tokens = {rel: self.links.token(tenant, run_id, ck, version, rel, expires) for rel in files}
        return tokens, expires

    async def download(self, request: Request) -> Response:
        """``GET /downloads/{token}/{file}``: one file of an ``external_weights`` checkpoint."""
        token, rel = request.path_params["token"], request.path_params["file"]
        run_id = self.links.target(token).run_id
        owner = await run_in_threadpool(self.store.runs.tenant_of, run_id)
        target = self.links.verify(token, rel, owner)
        if API_KEY_HEADER in request.headers and self.policy.tenant(request.headers) != owner:
            raise ApiError(404, "unknown download link")
        try:
            f = await run_in_threadpool(
                self.store.checkpoints.open_file, run_id, target.checkpoint_id, target.version, rel
            )
        except UnknownCheckpointError:
            raise ApiError(
                404,
                f"tinker://{run_id}/{target.checkpoint_id} file {rel!r} is gone (the checkpoint "
                "was deleted, overwritten or expired)",
            ) from None
        size = await run_in_threadpool(lambda: os.fstat(f.fileno()).st_size)
        return StreamingResponse(
            _chunks(f), media_type="application/octet-stream",
            headers={"Content-Length": str(size),
                     "Content-Disposition": f'attachment; filename="{rel.rsplit("/", 1)[-1]}"'},
        )  # fmt: skip

    async def copy_weights(self, request: Request) -> Response:
        """``POST /copy_weights``: see :mod:`tinkjax.server._copies`."""
        body = await read_json_body(request, self.max_body_bytes)
        req = decode_json(body, CopyWeightsRequest)
        tenant: str = request.state.tenant
        key = request.headers.get("x-idempotency-key")
        token = request.headers.get("x-tinker-weights-access-token")
        if token is not None and req.weights_access_token is None:
            req = msgspec.structs.replace(req, weights_access_token=token)

        def run() -> Any:
            self.tenancy.request(tenant, req)
            return self.copies.copy(req, tenant=tenant, key=key, digest=digest(body))

        return json_response(await run_in_threadpool(run))


def _chunks(f: BinaryIO, size: int = 1 << 20) -> Iterator[bytes]:
    """The bytes of ``f`` in blocks (Starlette iterates this on a worker thread), then closed."""
    with f:
        while block := f.read(size):
            yield block
