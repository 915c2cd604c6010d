"""Client configuration: arguments, then ``TINKER_*`` environment variables, then defaults.

The API key is a secret: :class:`ClientConfig` masks it in ``repr`` and :func:`mask_secrets`
scrubs it from any text the client logs or puts in an exception message.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from typing import Any

import msgspec

from tinkjax._net import is_loopback_url
from tinkjax.codec import WireMode
from tinkjax.errors import ConfigurationError

__all__ = [
    "DEFAULT_BASE_URL",
    "EMBEDDED_PLACEHOLDER_URL",
    "LOCAL_API_KEY",
    "ClientConfig",
    "is_loopback_url",
    "mask_secrets",
    "remember_secret",
    "resolve_config",
]

logger = logging.getLogger("tinkjax.client")

DEFAULT_BASE_URL = "https://tinker.thinkingmachines.dev/services/tinker-prod"
#: The key of an embedded configuration until the backend is started: it accepts only the key
#: it generates, which :func:`tinkjax.client._embedded.start_embedded` puts in its place.
LOCAL_API_KEY = "tml-local-embedded"
#: The ``base_url`` of an embedded configuration until the backend is started (its port is
#: only known then): :func:`tinkjax.client._embedded.start_embedded` replaces it.
EMBEDDED_PLACEHOLDER_URL = "http://127.0.0.1:0"

# Every key the process has used, so log/exception text can be scrubbed of all of them.
_known_secrets: set[str] = set()


def remember_secret(key: str) -> None:
    """Mask ``key`` in log and exception text from now on (see :func:`mask_secrets`)."""
    _known_secrets.add(key)


def mask_secrets(text: str) -> str:
    """``text`` with every API key this process has configured replaced by ``***``."""
    for secret in _known_secrets:
        if secret and secret in text:
            text = text.replace(secret, "***")
    return text


def _mask(key: str | None) -> str:
    if key is None:
        return "None"
    prefix = "tml-" if key.startswith("tml-") else ""
    return f"'{prefix}***'"


class ClientConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Resolved client settings (see :func:`resolve_config`).

    Attributes:
        base_url: service root; paths are appended as ``{base_url}/api/v1/...``.
        api_key: sent as ``X-API-Key``; masked in ``repr``.
        timeout: read/write timeout of one HTTP request, seconds.
        connect_timeout: connection timeout, seconds.
        max_retries: transport-level retries of one HTTP call (0 disables).
        poll_error_timeout: how long a future keeps polling while every answer is an error
            (429, 5xx, connection failures, no answer), seconds; then it raises
            :class:`~tinkjax.errors.FutureTimeoutError`. ``408``/``try_again`` answers (the
            request is queued or running) do not count; any answer that is not an error
            starts the count again.
        project_id: sent with ``create_session``.
        tags: sent with ``create_session``.
        user_metadata: sent with ``create_session``.
        wire_mode: ``"protobuf"`` (SDK ≥ 0.25, default) or ``"json"`` (JSON-era servers).
        embedded: the service is the in-process local backend (``base_url`` is
            :data:`EMBEDDED_PLACEHOLDER_URL` until it is started).
    """

    base_url: str
    api_key: str | None = None
    timeout: float = 60.0
    connect_timeout: float = 5.0
    max_retries: int = 10
    poll_error_timeout: float = 300.0
    project_id: str | None = None
    tags: tuple[str, ...] = ()
    user_metadata: dict[str, Any] | None = None
    wire_mode: WireMode = "protobuf"
    embedded: bool = False

    def __repr__(self) -> str:
        fields = ", ".join(
            f"{name}={_mask(self.api_key) if name == 'api_key' else repr(getattr(self, name))}"
            for name in self.__struct_fields__
        )
        return f"ClientConfig({fields})"

    __str__ = __repr__

    def __rich_repr__(self) -> Any:  # pragma: no cover - only for rich users
        for name in self.__struct_fields__:
            yield name, _mask(self.api_key) if name == "api_key" else getattr(self, name)


def _env(environ: Mapping[str, str], name: str) -> str | None:
    value = environ.get(name)
    return value if value else None


def resolve_config(
    *,
    api_key: str | None = None,
    base_url: str | None = None,
    timeout: float | None = None,
    connect_timeout: float | None = None,
    max_retries: int | None = None,
    poll_error_timeout: float | None = None,
    project_id: str | None = None,
    tags: list[str] | tuple[str, ...] | None = None,
    user_metadata: Mapping[str, Any] | None = None,
    wire_mode: WireMode | None = None,
    environ: Mapping[str, str] | None = None,
) -> ClientConfig:
    """Resolve settings: argument > environment > default. Only data: nothing is started.

    Environment: ``TINKER_API_KEY``, ``TINKER_BASE_URL``, ``TINKER_PROJECT_ID``, ``TINKER_TAGS``
    (comma-separated), ``TINKJAX_WIRE_MODE``, ``TINKJAX_POLL_ERROR_TIMEOUT`` (seconds).

    With neither a base URL nor an API key anywhere, or with ``base_url="local"``, the
    configuration is ``embedded``: the caller starts the in-process local backend
    (:func:`tinkjax.client._embedded.start_embedded`, as ``ServiceClient`` and ``RestClient``
    do) before using it.

    Raises:
        ConfigurationError: the remote service is configured without an API key, or with a key
            that does not start with ``tml-`` (nor is a JWT); or a value is out of range.
    """
    env = os.environ if environ is None else environ
    key = api_key or _env(env, "TINKER_API_KEY")
    url = base_url or _env(env, "TINKER_BASE_URL")
    embedded = url == "local" or (url is None and key is None)
    if embedded:
        url = EMBEDDED_PLACEHOLDER_URL
        key = key or LOCAL_API_KEY
    elif url is None:
        url = DEFAULT_BASE_URL
    assert url is not None
    url = url.rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ConfigurationError(f"base_url {url!r} must start with http:// or https://")
    if key is not None:
        _known_secrets.add(key)
    if not embedded and not is_loopback_url(url):
        if key is None:
            raise ConfigurationError(
                f"no API key for {url}: pass api_key=... or set TINKER_API_KEY "
                "(or leave both base_url and api_key unset to use the embedded local backend)"
            )
        if not key.startswith(("tml-", "eyJ")):
            raise ConfigurationError(
                f"api_key {_mask(key)} is malformed: Tinker API keys start with 'tml-'"
            )
    env_tags = _env(env, "TINKER_TAGS")
    resolved_tags = (
        tuple(tags)
        if tags is not None
        else tuple(t.strip() for t in env_tags.split(",") if t.strip())
        if env_tags
        else ()
    )
    mode = wire_mode or _env(env, "TINKJAX_WIRE_MODE") or "protobuf"
    if mode not in ("protobuf", "json"):
        raise ConfigurationError(f"wire_mode {mode!r} must be 'protobuf' or 'json'")
    error_timeout = poll_error_timeout
    env_error_timeout = _env(env, "TINKJAX_POLL_ERROR_TIMEOUT")
    if error_timeout is None and env_error_timeout is not None:
        try:
            error_timeout = float(env_error_timeout)
        except ValueError:
            raise ConfigurationError(
                f"TINKJAX_POLL_ERROR_TIMEOUT {env_error_timeout!r} is not a number of seconds"
            ) from None
    cfg = ClientConfig(
        base_url=url,
        api_key=key,
        timeout=60.0 if timeout is None else float(timeout),
        connect_timeout=5.0 if connect_timeout is None else float(connect_timeout),
        max_retries=10 if max_retries is None else int(max_retries),
        poll_error_timeout=300.0 if error_timeout is None else float(error_timeout),
        project_id=project_id or _env(env, "TINKER_PROJECT_ID"),
        tags=resolved_tags,
        user_metadata=dict(user_metadata) if user_metadata else None,
        wire_mode=mode,  # type: ignore[arg-type]
        embedded=embedded,
    )
    if cfg.timeout <= 0 or cfg.connect_timeout <= 0:
        raise ConfigurationError(f"timeout {cfg.timeout} and connect_timeout must be > 0")
    if not (math.isfinite(cfg.poll_error_timeout) and cfg.poll_error_timeout > 0):
        raise ConfigurationError(
            f"poll_error_timeout {cfg.poll_error_timeout!r} must be a finite number of seconds > 0"
        )
    if cfg.max_retries < 0:
        raise ConfigurationError(f"max_retries {cfg.max_retries} must be >= 0")
    return cfg
