"""``RestClient``: training runs, checkpoints, sessions and samplers (session-less)."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import httpx

from tinkjax.errors import APIResponseValidationError
from tinkjax.types import (
    Checkpoint,
    CheckpointsListResponse,
    CopyWeightsRequest,
    CopyWeightsResponse,
    ExternalWeightsUrlsResponse,
    GetSamplerResponse,
    GetServerCapabilitiesResponse,
    GetSessionResponse,
    ListSessionsResponse,
    TrainingRun,
    TrainingRunsResponse,
    WeightsInfoRequest,
    WeightsInfoResponse,
    parse_tinker_path,
)

from ._config import resolve_config
from ._download import CheckpointDownload, ExternalWeightsDownload, check_output_dir
from ._embedded import start_embedded
from ._futures import APIFuture
from ._loop import submit
from ._paths import checkpoint_path, id_segment
from ._transport import Transport, decode_response
from ._twins import awaiting

if TYPE_CHECKING:
    from ._telemetry import TelemetryReporter

__all__ = ["RestClient", "apaginate", "paginate"]

T = TypeVar("T")
Item = TypeVar("Item")

AccessScope = Literal["owned", "accessible"]


def paginate(
    fetch: Callable[[int, int], APIFuture[tuple[list[Item], int | None]]],
    *,
    page_size: int,
    start: int = 0,
) -> Iterator[Item]:
    """Iterate a paginated listing page by page (blocking).

    Args:
        fetch: ``fetch(limit, offset)`` → future of ``(items, total_count or None)``.
        page_size: items per request.
        start: the first offset.

    Iteration stops after the last item (by ``total_count`` when the server gives one, else at
    the first short page).
    """
    offset = start
    while True:
        items, total = fetch(page_size, offset).result()
        yield from items
        offset += len(items)
        if not items or len(items) < page_size or (total is not None and offset >= total):
            return


async def apaginate(
    fetch: Callable[[int, int], Awaitable[tuple[list[Item], int | None]]],
    *,
    page_size: int,
    start: int = 0,
) -> AsyncIterator[Item]:
    """Async twin of :func:`paginate`."""
    offset = start
    while True:
        items, total = await fetch(page_size, offset)
        for item in items:
            yield item
        offset += len(items)
        if not items or len(items) < page_size or (total is not None and offset >= total):
            return


class RestClient:
    """Read and manage stored resources. Every method returns an :class:`APIFuture`; the
    ``*_async`` twins return the value.

    Args:
        base_url: as for :class:`ServiceClient` (``TINKER_BASE_URL``, or ``"local"``).
        api_key: as for :class:`ServiceClient` (``TINKER_API_KEY``).
        http_transport: an ``httpx.AsyncBaseTransport`` replacing the network (tests).
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        http_transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        config = start_embedded(resolve_config(base_url=base_url, api_key=api_key))
        self.transport = Transport(config, http_transport=http_transport)

    @classmethod
    def from_transport(cls, transport: Transport) -> RestClient:
        """A client on an existing transport (a ``ServiceClient``'s: the REST calls need no
        session, only its configuration and connections)."""
        self = cls.__new__(cls)
        self.transport = transport
        return self

    #: The telemetry reporter of the ``ServiceClient`` that made this client (else ``None``).
    telemetry: TelemetryReporter | None = None

    def get_telemetry(self) -> TelemetryReporter | None:
        """The official SDK's accessor of :attr:`telemetry`."""
        return self.telemetry

    def __repr__(self) -> str:
        return f"RestClient(base_url={self.transport.config.base_url!r})"

    def close(self) -> None:
        """Close the connections (a client made by ``ServiceClient`` shares its connections;
        closing the ``ServiceClient`` closes them)."""
        if not self.transport.closed:
            submit(self.transport.aclose()).result()

    def __enter__(self) -> RestClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, coro: Awaitable[T]) -> APIFuture[T]:
        async def run() -> T:
            return await coro

        return APIFuture(submit(run()))

    async def _get(self, path: str, tp: type[T], params: dict[str, Any] | None = None) -> T:
        resp = await self.transport.request("GET", path, params=params)
        return decode_response(resp, tp)

    # ------------------------------------------------------------ server
    def get_server_capabilities(self) -> APIFuture[GetServerCapabilitiesResponse]:
        """The models the server supports."""
        return self._call(
            self._get("/api/v1/get_server_capabilities", GetServerCapabilitiesResponse)
        )

    get_server_capabilities_async = awaiting(get_server_capabilities)

    # ------------------------------------------------------------ training runs
    def get_training_run(
        self, training_run_id: str, access_scope: AccessScope = "owned"
    ) -> APIFuture[TrainingRun]:
        """One training run (its base model, LoRA rank, last checkpoints)."""
        return self._call(
            self._get(
                f"/api/v1/training_runs/{id_segment(training_run_id, 'training_run_id')}",
                TrainingRun,
                {"access_scope": access_scope},
            )
        )

    get_training_run_async = awaiting(get_training_run)

    def get_training_run_by_tinker_path(
        self, tinker_path: str, access_scope: AccessScope = "owned"
    ) -> APIFuture[TrainingRun]:
        """The training run a ``tinker://`` checkpoint path belongs to."""
        return self.get_training_run(parse_tinker_path(tinker_path).training_run_id, access_scope)

    get_training_run_by_tinker_path_async = awaiting(get_training_run_by_tinker_path)

    def list_training_runs(
        self,
        limit: int = 20,
        offset: int = 0,
        access_scope: AccessScope = "owned",
        project_id: str | None = None,
    ) -> APIFuture[TrainingRunsResponse]:
        """One page of training runs (``cursor.total_count`` tells how many exist)."""
        params = {
            "limit": limit,
            "offset": offset,
            "access_scope": access_scope,
            "project_id": project_id,
        }
        return self._call(self._get("/api/v1/training_runs", TrainingRunsResponse, params))

    list_training_runs_async = awaiting(list_training_runs)

    def iter_training_runs(
        self,
        page_size: int = 20,
        access_scope: AccessScope = "owned",
        project_id: str | None = None,
    ) -> Iterator[TrainingRun]:
        """Every training run, fetched page by page."""

        def fetch(limit: int, offset: int) -> APIFuture[tuple[list[TrainingRun], int | None]]:
            async def run() -> tuple[list[TrainingRun], int | None]:
                page = await self.list_training_runs(limit, offset, access_scope, project_id)
                return page.training_runs, page.cursor.total_count

            return self._call(run())

        return paginate(fetch, page_size=page_size)

    # ------------------------------------------------------------ checkpoints
    def list_checkpoints(self, training_run_id: str) -> APIFuture[CheckpointsListResponse]:
        """The checkpoints of one training run."""
        return self._call(
            self._get(
                f"/api/v1/training_runs/{id_segment(training_run_id, 'training_run_id')}/checkpoints",
                CheckpointsListResponse,
            )
        )

    list_checkpoints_async = awaiting(list_checkpoints)

    def list_user_checkpoints(
        self, limit: int = 100, offset: int = 0
    ) -> APIFuture[CheckpointsListResponse]:
        """One page of all the user's checkpoints."""
        return self._call(
            self._get(
                "/api/v1/checkpoints", CheckpointsListResponse, {"limit": limit, "offset": offset}
            )
        )

    list_user_checkpoints_async = awaiting(list_user_checkpoints)

    def iter_user_checkpoints(self, page_size: int = 100) -> Iterator[Checkpoint]:
        """All the user's checkpoints, fetched page by page."""

        def fetch(limit: int, offset: int) -> APIFuture[tuple[list[Checkpoint], int | None]]:
            async def run() -> tuple[list[Checkpoint], int | None]:
                page = await self.list_user_checkpoints(limit, offset)
                return page.checkpoints, page.cursor.total_count if page.cursor else None

            return self._call(run())

        return paginate(fetch, page_size=page_size)

    def delete_checkpoint(self, training_run_id: str, checkpoint_id: str) -> APIFuture[None]:
        """Delete a checkpoint (``checkpoint_id`` like ``weights/final``)."""

        async def run() -> None:
            await self.transport.request("DELETE", checkpoint_path(training_run_id, checkpoint_id))

        return self._call(run())

    delete_checkpoint_async = awaiting(delete_checkpoint)

    def delete_checkpoint_from_tinker_path(self, tinker_path: str) -> APIFuture[None]:
        """Delete the checkpoint at a ``tinker://`` path."""
        parsed = parse_tinker_path(tinker_path)
        return self.delete_checkpoint(parsed.training_run_id, parsed.checkpoint_id)

    delete_checkpoint_from_tinker_path_async = awaiting(delete_checkpoint_from_tinker_path)

    def get_weights_info_by_tinker_path(self, tinker_path: str) -> APIFuture[WeightsInfoResponse]:
        """Base model, LoRA settings and optimizer family of a checkpoint."""

        async def run() -> WeightsInfoResponse:
            resp = await self.transport.request(
                "POST", "/api/v1/weights_info", json=WeightsInfoRequest(tinker_path=tinker_path)
            )
            return decode_response(resp, WeightsInfoResponse)

        return self._call(run())

    get_weights_info_by_tinker_path_async = awaiting(get_weights_info_by_tinker_path)

    def get_checkpoint_archive_url(
        self, training_run_id: str, checkpoint_id: str
    ) -> APIFuture[str]:
        """A URL the checkpoint's ``tar.gz`` archive can be downloaded from (the ``Location``
        of the service's redirect)."""

        async def run() -> str:
            path = checkpoint_path(training_run_id, checkpoint_id) + "/archive"
            resp = await self.transport.request("GET", path, headers={"Accept": "application/gzip"})
            location = resp.headers.get("location")
            if resp.status_code in (301, 302, 303, 307, 308) and location:
                return str(resp.url.join(location))
            if resp.status_code == 200:
                return str(resp.url)
            raise APIResponseValidationError(
                f"archive of {training_run_id}/{checkpoint_id}: HTTP {resp.status_code} "
                "without a Location"
            )

        return self._call(run())

    get_checkpoint_archive_url_async = awaiting(get_checkpoint_archive_url)

    def get_checkpoint_archive_url_from_tinker_path(self, tinker_path: str) -> APIFuture[str]:
        """:meth:`get_checkpoint_archive_url` for a ``tinker://`` path."""
        parsed = parse_tinker_path(tinker_path)
        return self.get_checkpoint_archive_url(parsed.training_run_id, parsed.checkpoint_id)

    get_checkpoint_archive_url_from_tinker_path_async = awaiting(
        get_checkpoint_archive_url_from_tinker_path
    )

    def download_checkpoint(
        self,
        tinker_path: str,
        output_dir: str | Path,
        *,
        force: bool = False,
        progress: Callable[[int, int | None], None] | None = None,
        progress_bar: bool | None = None,
        age_identity: str | None = None,
    ) -> APIFuture[Path]:
        """Download a checkpoint into the new folder ``output_dir``.

        A ``weights/`` or ``sampler_weights/`` checkpoint comes as an archive, safely extracted
        (see :class:`CheckpointDownload`); an ``external_weights/`` one file by file from its
        signed links (see :class:`ExternalWeightsDownload`), its ``.age`` files decrypted with
        ``age_identity`` (an ``AGE-SECRET-KEY-1...`` string; needs ``pyrage``) when given.
        """
        if parse_tinker_path(tinker_path).kind == "external_weights":

            async def external() -> Path:
                check_output_dir(Path(output_dir), force)
                dl = ExternalWeightsDownload(
                    self.transport,
                    lambda: self.get_external_weights_urls(tinker_path),
                    output_dir,
                    force=force,
                    age_identity=age_identity,
                    progress=progress,
                )
                return await dl.run_async()

            return self._call(external())
        if age_identity is not None:
            raise ValueError(
                f"age_identity: only external_weights checkpoints are encrypted, not {tinker_path!r}"
            )

        async def run() -> Path:
            check_output_dir(Path(output_dir), force)
            url = await self.get_checkpoint_archive_url_from_tinker_path(tinker_path)
            dl = CheckpointDownload(
                self.transport,
                url,
                output_dir,
                label=tinker_path,
                force=force,
                progress=progress,
                progress_bar=progress_bar,
            )
            return await dl.run_async()

        return self._call(run())

    def get_external_weights_urls(self, tinker_path: str) -> APIFuture[ExternalWeightsUrlsResponse]:
        """Signed download URLs, one per file (keyed by its path in the checkpoint), of an
        ``external_weights`` checkpoint, valid until ``expires``. They need no API key.

        Raises:
            ValueError: ``tinker_path`` is not ``tinker://<run>/external_weights/<name>``.
        """
        parsed = parse_tinker_path(tinker_path)
        if parsed.kind != "external_weights":
            raise ValueError(
                "get_external_weights_urls only accepts external weights checkpoints "
                f"(tinker://<training_run_id>/external_weights/<name>), got {tinker_path!r}"
            )
        path = checkpoint_path(parsed.training_run_id, parsed.checkpoint_id)
        return self._call(self._get(f"{path}/external_weights_urls", ExternalWeightsUrlsResponse))

    get_external_weights_urls_async = awaiting(get_external_weights_urls)

    def _checkpoint_action(
        self,
        tinker_path: str,
        method: str,
        action: str,
        json: Any = None,
        max_retries: int | None = None,
    ) -> APIFuture[None]:
        parsed = parse_tinker_path(tinker_path)
        path = f"{checkpoint_path(parsed.training_run_id, parsed.checkpoint_id)}/{action}"

        async def run() -> None:
            await self.transport.request(method, path, json=json, max_retries=max_retries)

        return self._call(run())

    def publish_checkpoint_from_tinker_path(self, tinker_path: str) -> APIFuture[None]:
        """Publish a checkpoint of yours: every key may then load, sample, describe and copy
        it (a ``ConflictError`` when it already is public)."""
        # Not retried: a publish whose answer was lost would be answered 409 the second time.
        return self._checkpoint_action(tinker_path, "POST", "publish", max_retries=0)

    publish_checkpoint_from_tinker_path_async = awaiting(publish_checkpoint_from_tinker_path)

    def unpublish_checkpoint_from_tinker_path(self, tinker_path: str) -> APIFuture[None]:
        """Make a published checkpoint private again (a ``ConflictError`` when it is)."""
        return self._checkpoint_action(tinker_path, "DELETE", "publish", max_retries=0)

    unpublish_checkpoint_from_tinker_path_async = awaiting(unpublish_checkpoint_from_tinker_path)

    def set_checkpoint_ttl_from_tinker_path(
        self, tinker_path: str, ttl_seconds: int | None
    ) -> APIFuture[None]:
        """Make a checkpoint expire ``ttl_seconds`` from now (``None``: never). An expired
        checkpoint disappears from listings and can no longer be loaded or downloaded."""
        return self._checkpoint_action(tinker_path, "PUT", "ttl", {"ttl_seconds": ttl_seconds})

    set_checkpoint_ttl_from_tinker_path_async = awaiting(set_checkpoint_ttl_from_tinker_path)

    def copy_weights(
        self,
        path: str,
        destination_project_id: str | None = None,
        *,
        ttl_seconds: int | None = None,
        weights_access_token: str | None = None,
    ) -> APIFuture[str]:
        """Copy a checkpoint (yours or a published one) into a new training run of a project;
        returns the copy's ``tinker://`` path (same kind and name; a run that cannot be trained
        on). The copy expires after ``ttl_seconds`` (``None``: never; the source's expiry is not
        inherited). Retries reuse one idempotency key, so a lost answer never copies twice.

        Raises:
            ValueError: no ``destination_project_id`` and no ``TINKER_PROJECT_ID``.
        """
        if destination_project_id is None:
            destination_project_id = os.environ.get("TINKER_PROJECT_ID") or None
        if destination_project_id is None:
            raise ValueError("Provide destination_project_id or set TINKER_PROJECT_ID")
        request = CopyWeightsRequest(
            source_path=path, destination_project_id=destination_project_id,
            ttl_seconds=ttl_seconds,
        )  # fmt: skip
        return self._copy(request, weights_access_token)

    copy_weights_async = awaiting(copy_weights)

    def copy_weights_to_run(
        self,
        path: str,
        session_id: str,
        model_seq_id: int,
        *,
        ttl_seconds: int | None = None,
        weights_access_token: str | None = None,
    ) -> APIFuture[str]:
        """:meth:`copy_weights` into the new training run ``{session_id}:train:{model_seq_id}``
        of one of your sessions (the request's other destination form)."""
        request = CopyWeightsRequest(
            source_path=path, session_id=session_id, model_seq_id=model_seq_id,
            ttl_seconds=ttl_seconds,
        )  # fmt: skip
        return self._copy(request, weights_access_token)

    copy_weights_to_run_async = awaiting(copy_weights_to_run)

    def _copy(self, request: CopyWeightsRequest, token: str | None) -> APIFuture[str]:
        """``/copy_weights`` with one idempotency key for every retry (the access token goes
        in a header, as the official SDK sends it)."""
        headers = {"X-Idempotency-Key": str(uuid.uuid4())}
        if token is not None:
            headers["X-Tinker-Weights-Access-Token"] = token

        async def run() -> str:
            resp = await self.transport.request(
                "POST", "/api/v1/copy_weights", json=request, headers=headers
            )
            return decode_response(resp, CopyWeightsResponse).tinker_path

        return self._call(run())

    # ------------------------------------------------------------ sessions, samplers
    def get_session(
        self, session_id: str, access_scope: AccessScope = "owned"
    ) -> APIFuture[GetSessionResponse]:
        """The training runs and samplers of a session."""
        return self._call(
            self._get(
                f"/api/v1/sessions/{id_segment(session_id, 'session_id')}",
                GetSessionResponse,
                {"access_scope": access_scope},
            )
        )

    get_session_async = awaiting(get_session)

    def list_sessions(
        self, limit: int = 20, offset: int = 0, access_scope: AccessScope = "owned"
    ) -> APIFuture[ListSessionsResponse]:
        """One page of session ids."""
        return self._call(
            self._get(
                "/api/v1/sessions",
                ListSessionsResponse,
                {"limit": limit, "offset": offset, "access_scope": access_scope},
            )
        )

    list_sessions_async = awaiting(list_sessions)

    def iter_sessions(self, page_size: int = 20) -> Iterator[str]:
        """Every session id, fetched page by page."""

        def fetch(limit: int, offset: int) -> APIFuture[tuple[list[str], int | None]]:
            async def run() -> tuple[list[str], int | None]:
                return (await self.list_sessions(limit, offset)).sessions, None

            return self._call(run())

        return paginate(fetch, page_size=page_size)

    def get_sampler(self, sampler_id: str) -> APIFuture[GetSamplerResponse]:
        """A sampler's base model and weights path."""
        return self._call(
            self._get(
                f"/api/v1/samplers/{id_segment(sampler_id, 'sampler_id')}", GetSamplerResponse
            )
        )

    get_sampler_async = awaiting(get_sampler)
