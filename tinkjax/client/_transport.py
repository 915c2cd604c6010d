"""The one HTTP choke point: every request of every client goes through :meth:`Transport.request`.

It adds the headers (``X-API-Key``, idempotency key), retries what the protocol says is
retryable (honouring ``x-should-retry`` and ``retry-after``) with :class:`~._backoff.Backoff`,
maps failures onto :mod:`tinkjax.errors` (``raise ... from exc``) with the API key scrubbed
from every message, and emits ``tinkjax.request.{start,stop,exception}`` events.

The API key only goes to the service's own origin: every request, and every hop of a
redirected download, compares its URL's origin (scheme, host, port with the default port
filled in; :func:`origin_of`) with the ``base_url``'s exactly, and sends no ``X-API-Key``
when they differ. Redirects are followed here, hop by hop, never by httpx (which would carry
the header along); once a hop left the origin the key is not sent again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any, TypeVar

import httpx

from tinkjax import events
from tinkjax._version import __version__
from tinkjax.codec import decode_json, encode_json
from tinkjax.errors import (
    APIConnectionError,
    APIError,
    APIResponseValidationError,
    APIStatusError,
    APITimeoutError,
    DecodeError,
    status_error_class,
)

from ._backoff import Backoff, retry_after_seconds
from ._config import ClientConfig, mask_secrets
from ._fasthttp import FastHTTP, fast_http_applicable

__all__ = ["Transport", "decode_response", "is_retryable_status", "origin_of"]

logger = logging.getLogger("tinkjax.client")

_RETRYABLE = frozenset({408, 409, 429})
#: Budget of bodiless-400 answers treated as a connection error (a proxy rejecting the request).
_EMPTY_400_RETRIES = 16
#: Redirect hops a download follows (httpx's default).
_MAX_REDIRECTS = 20
_DEFAULT_PORTS = {"http": 80, "https": 443}


def origin_of(url: str | httpx.URL) -> tuple[str, str, int | None]:
    """``(scheme, host, port)`` of ``url``, lower-cased, the default port filled in.

    The user-info part is not the host: ``http://127.0.0.1:4000@evil:5000/`` is ``evil:5000``.
    """
    u = url if isinstance(url, httpx.URL) else httpx.URL(url)
    scheme = u.scheme.lower()
    return scheme, u.host.lower(), u.port if u.port is not None else _DEFAULT_PORTS.get(scheme)


def _h2_available() -> bool:
    try:
        import h2  # noqa: F401
    except ImportError:
        return False
    return True


def is_retryable_status(status: int) -> bool:
    """408, 409, 429 and every 5xx are worth retrying."""
    return status in _RETRYABLE or status >= 500


T = TypeVar("T")


def decode_response(response: httpx.Response, tp: type[T]) -> T:
    """Decode a 2xx JSON answer into ``tp``.

    Raises:
        APIResponseValidationError: the body is not valid JSON of ``tp``.
    """
    try:
        return decode_json(response.content, tp)
    except DecodeError as exc:
        path = response.request.url.path if response.request is not None else "?"
        raise APIResponseValidationError(
            mask_secrets(
                f"HTTP {response.status_code} answer of {path} is not a valid {tp.__name__}: {exc}"
            ),
            body=response.content[:2000],
        ) from None


def _body_of(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text


class Transport:
    """HTTP access to one service with one configuration; shared by the clients of a session.

    Plain ``http://`` services (the local backend) are spoken to with the lean HTTP/1.1 pool of
    :mod:`._fasthttp` unless a custom ``http_transport`` is given or a proxy from the
    environment applies; everything else (https, HTTP/2, proxies, streaming downloads) goes
    through httpx. Both raise httpx's exceptions, mapped and retried here the same way.

    Args:
        config: the resolved configuration.
        http_transport: an ``httpx.AsyncBaseTransport`` to use instead of the network (tests use
            ``httpx.MockTransport``).
        fast_http: whether the lean pool may serve plain ``http://`` URLs (``False`` forces
            httpx everywhere).
    """

    def __init__(
        self,
        config: ClientConfig,
        *,
        http_transport: httpx.AsyncBaseTransport | None = None,
        fast_http: bool = True,
    ) -> None:
        self.config = config
        self._origin = origin_of(config.base_url)
        self._http_transport = http_transport
        self._client: httpx.AsyncClient | None = None
        self._fast: FastHTTP | None = None
        if fast_http and http_transport is None and fast_http_applicable(config.base_url):
            self._fast = FastHTTP(
                config.base_url,
                connect_timeout=config.connect_timeout,
                user_agent=f"tinkjax/{__version__}",
            )
        self.closed = False

    def __repr__(self) -> str:
        return f"Transport(base_url={self.config.base_url!r})"

    def _get_client(self) -> httpx.AsyncClient:
        if self._client is None:
            cfg = self.config
            self._client = httpx.AsyncClient(
                http2=_h2_available() and self._http_transport is None,
                transport=self._http_transport,
                timeout=httpx.Timeout(cfg.timeout, connect=cfg.connect_timeout),
                limits=httpx.Limits(max_connections=1000, max_keepalive_connections=100),
                headers={"User-Agent": f"tinkjax/{__version__}"},
                follow_redirects=False,
            )
        return self._client

    def is_own_origin(self, url: str | httpx.URL) -> bool:
        """Whether ``url`` has exactly the service's origin (the API key may go there)."""
        try:
            return origin_of(url) == self._origin
        except httpx.InvalidURL:
            return False

    def _url(self, path: str) -> str:
        return path if path.startswith(("http://", "https://")) else self.config.base_url + path

    def _headers(self, method: str, extra: Mapping[str, str] | None, url: str) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self.config.api_key is not None and self.is_own_origin(url):
            headers["X-API-Key"] = self.config.api_key
        if method != "GET":
            headers["X-Idempotency-Key"] = f"tinkjax-retry-{uuid.uuid4()}"
        if extra:
            headers.update(extra)
        return headers

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        content: bytes | None = None,
        content_type: str | None = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        max_retries: int | None = None,
        timeout: float | None = None,
        raise_for_status: bool = True,
        ids: Mapping[str, str | None] | None = None,
    ) -> httpx.Response:
        """Send one logical request, retrying it at the transport level.

        Args:
            method: HTTP method.
            path: ``/api/v1/...`` (appended to the base URL), or an absolute ``http(s)://`` URL.
            json: a wire Struct or builtins, encoded with :func:`tinkjax.codec.encode_json`.
            content: a raw body (with ``content_type``), e.g. protobuf bytes.
            params: query parameters (``None`` values dropped).
            headers: extra headers (they win over the defaults).
            max_retries: retries after the first try; ``None`` uses the configured value.
            timeout: read timeout of each try, seconds.
            raise_for_status: when false, non-2xx answers are returned, not raised (and not
                retried): the future poll loop reads them itself.
            ids: ``session_id``/``model_id``/``sampling_session_id`` for the events.

        Raises:
            APIStatusError: a subclass per status (see :mod:`tinkjax.errors`).
            APIConnectionError: no answer (``APITimeoutError`` when it timed out).
        """
        retries = self.config.max_retries if max_retries is None else max_retries
        url = self._url(path)
        all_headers = self._headers(method, headers, url)
        body = content
        if json is not None:
            body = encode_json(json)
            all_headers.setdefault("Content-Type", "application/json")
        elif content is not None:
            all_headers.setdefault("Content-Type", content_type or "application/octet-stream")
        query = {k: v for k, v in (params or {}).items() if v is not None} or None
        req_timeout = (
            httpx.Timeout(timeout, connect=self.config.connect_timeout)
            if timeout is not None
            else httpx.USE_CLIENT_DEFAULT
        )
        meta: dict[str, Any] = {
            "method": method,
            "path": path,
            "session_id": None,
            "model_id": None,
            "sampling_session_id": None,
            **(ids or {}),
            "telemetry_metadata": dict(events.current_telemetry_metadata()),
        }
        backoff = Backoff(base=0.5, cap=10.0)
        attempt = 0
        empty_400 = 0
        fast = self._fast if self._fast is not None and self._fast.serves(url) else None
        client = self._get_client() if fast is None else None
        read_timeout = self.config.timeout if timeout is None else timeout
        while True:
            all_headers["x-tinkjax-retry-count"] = str(attempt)
            start_meta = {**meta, "retry_count": attempt}
            events.emit(("tinkjax", "request", "start"), {"system_time": time.time()}, start_meta)
            t0 = time.perf_counter()
            error: APIError
            try:
                if fast is not None:
                    response = await fast.request(
                        method,
                        url,
                        headers=all_headers,
                        content=body,
                        params=query,
                        timeout=read_timeout,
                    )
                else:
                    assert client is not None
                    response = await client.request(
                        method,
                        url,
                        content=body,
                        params=query,
                        headers=all_headers,
                        timeout=req_timeout,
                    )
            except httpx.TimeoutException as exc:
                error = APITimeoutError(mask_secrets(f"{method} {path} timed out: {exc}"))
                cause: BaseException = exc
            except httpx.HTTPError as exc:
                error = APIConnectionError(
                    mask_secrets(f"{method} {path} failed: {type(exc).__name__}: {exc}")
                )
                cause = exc
            else:
                duration = time.perf_counter() - t0
                status = response.status_code
                events.emit(
                    ("tinkjax", "request", "stop"),
                    {"duration_s": duration},
                    {**start_meta, "status": status},
                )
                if status < 400 or not raise_for_status:
                    return response
                if status == 400 and not response.content and empty_400 < _EMPTY_400_RETRIES:
                    # A bodiless 400 comes from a proxy, not the service: a connection problem.
                    empty_400 += 1
                    error = APIConnectionError(f"{method} {path}: HTTP 400 without a body")
                    cause = APIConnectionError("empty 400")
                    if attempt < retries:
                        await asyncio.sleep(backoff.next())
                        attempt += 1
                        continue
                    raise error
                should = response.headers.get("x-should-retry")
                retryable = (
                    should.lower() == "true" if should is not None else is_retryable_status(status)
                )
                if retryable and attempt < retries:
                    delay = backoff.next(retry_after_seconds(response.headers))
                    logger.debug(
                        "retrying %s %s after HTTP %d in %.2fs", method, path, status, delay
                    )
                    await asyncio.sleep(delay)
                    attempt += 1
                    continue
                raise self.status_error(response, path)
            duration = time.perf_counter() - t0
            events.emit(
                ("tinkjax", "request", "exception"),
                {"duration_s": duration},
                {**start_meta, "error_type": type(error).__name__, "error": str(error)},
            )
            if attempt < retries:
                delay = backoff.next()
                logger.debug(
                    "retrying %s %s after %s in %.2fs", method, path, type(error).__name__, delay
                )
                await asyncio.sleep(delay)
                attempt += 1
                continue
            raise error from cause

    def status_error(self, response: httpx.Response, path: str) -> APIStatusError:
        """The exception for a non-2xx ``response`` (key scrubbed from the message)."""
        status = response.status_code
        text = mask_secrets(response.text[:2000])
        cls = status_error_class(status)
        err = cls(
            f"Error code: {status} - {text} ({path})",
            status_code=status,
            response=response,
            body=_body_of(response),
        )
        err.retry_after = retry_after_seconds(response.headers)  # type: ignore[attr-defined]
        return err

    @contextlib.asynccontextmanager
    async def stream(
        self, url: str, *, follow_redirects: bool = True
    ) -> AsyncIterator[httpx.Response]:
        """Stream a GET of ``url`` (absolute or ``/api/v1/...``); non-2xx raises.

        Redirects (up to 20 hops) are followed one by one: a hop whose origin is not the
        service's is sent without the API key, and so is every hop after it.
        """
        client = self._get_client()
        full = self._url(url)
        response: httpx.Response | None = None
        try:
            request = client.build_request("GET", full, headers=self._headers("GET", None, full))
            for _ in range(_MAX_REDIRECTS + 1):
                if not self.is_own_origin(request.url):
                    request.headers.pop("X-API-Key", None)
                response = await client.send(request, stream=True, follow_redirects=False)
                next_request = response.next_request
                if not follow_redirects or next_request is None:
                    break
                await response.aclose()
                request = next_request
            else:
                raise APIConnectionError(f"GET {url}: more than {_MAX_REDIRECTS} redirects")
            if response.status_code >= 400:
                await response.aread()
                raise self.status_error(response, url)
            yield response
        except httpx.TimeoutException as exc:
            raise APITimeoutError(mask_secrets(f"GET {url} timed out: {exc}")) from exc
        except httpx.HTTPError as exc:
            raise APIConnectionError(mask_secrets(f"GET {url} failed: {exc}")) from exc
        finally:
            if response is not None:
                await response.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        self.closed = True
        if self._fast is not None:
            await self._fast.aclose()
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()
