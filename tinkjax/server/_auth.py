"""API keys, tenants and archive download tokens of the local backend.

A tenant is identified by its key, as on the Tinker service: every session, model, run,
checkpoint, sampler, future and telemetry event belongs to the key that created it. The server
never keeps a key: it keeps the key's :func:`tenant_id` (a SHA-256 hex digest).

:class:`KeyPolicy` answers which key a request carries: by default any well-formed key is its own
tenant; with a list of keys (``tinkjax serve --api-keys FILE``) only those. A request without a
key, or with a key that is malformed or not listed, is answered 401.

:class:`ArchiveTokens` signs download links (``/archives/{token}.tar.gz``): an HMAC over the
tenant, the checkpoint and the expiry with a secret drawn when the server starts, so a link is
short-lived, cannot be forged, and stops working when the server restarts.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from tinkjax.server._errors import ApiError

__all__ = [
    "API_KEY_HEADER",
    "ARCHIVE_LINK_TTL_S",
    "ArchiveTokens",
    "KeyPolicy",
    "load_api_keys",
    "tenant_id",
]

#: The header that carries the key (the official SDK and tinkjax's client send it).
API_KEY_HEADER = "x-api-key"
#: How long an archive download link stays valid, in seconds.
ARCHIVE_LINK_TTL_S = 900.0
#: A well-formed key: 1-512 visible ASCII characters (no spaces, no control characters).
_KEY_RE = re.compile(r"[\x21-\x7e]{1,512}")


def tenant_id(key: str) -> str:
    """The tenant of ``key``: what the server stores instead of the key."""
    return hashlib.sha256(b"tinkjax-tenant:" + key.encode()).hexdigest()


def _check_key(key: str, where: str) -> str:
    if not _KEY_RE.fullmatch(key):
        raise ValueError(f"{where}: an API key must be 1-512 visible ASCII characters")
    return key


def load_api_keys(path: str | Path) -> list[str]:
    """The keys of a keys file: one per line; blank lines and lines starting with ``#`` skipped.

    Raises:
        ValueError: naming the file and line of a malformed key, or when it lists no key.
        OSError: when the file cannot be read.
    """
    keys = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        text = line.strip()
        if text and not text.startswith("#"):
            keys.append(_check_key(text, f"{path}:{n}"))
    if not keys:
        raise ValueError(f"{path}: lists no API key")
    return keys


class KeyPolicy:
    """Which keys the server accepts.

    Args:
        keys: the only keys accepted; ``None``: any well-formed key (each its own tenant).
    """

    def __init__(self, keys: Iterable[str] | None = None) -> None:
        self.allowed: frozenset[str] | None = None
        if keys is not None:
            self.allowed = frozenset(tenant_id(_check_key(k, "api_keys")) for k in keys)
            if not self.allowed:
                raise ValueError("api_keys: an empty list accepts no request; pass None or keys")

    @property
    def restricted(self) -> bool:
        """Whether only listed keys are accepted."""
        return self.allowed is not None

    def tenant(self, headers: Mapping[str, str]) -> str:
        """The tenant of a request's ``X-API-Key``.

        Raises:
            ApiError: 401 when the key is missing, malformed or not accepted.
        """
        key = headers.get(API_KEY_HEADER)
        if not key:
            raise ApiError(401, "missing API key: send it in the X-API-Key header")
        if not _KEY_RE.fullmatch(key):
            raise ApiError(401, "malformed API key: expected 1-512 visible ASCII characters")
        tenant = tenant_id(key)
        if self.allowed is not None and tenant not in self.allowed:
            raise ApiError(401, "API key not accepted by this server")
        return tenant


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class ArchiveTokens:
    """Signed, expiring download tokens for ``(run_id, checkpoint_id)`` of one tenant.

    The token carries the checkpoint and the expiry in the clear (not the tenant) and an HMAC of
    ``tenant, run_id, checkpoint_id, expiry``; :meth:`verify` recomputes it for the tenant that
    owns the run now.

    Args:
        ttl_s: how long a token stays valid.
    """

    def __init__(self, *, ttl_s: float = ARCHIVE_LINK_TTL_S) -> None:
        if not ttl_s > 0:
            raise ValueError(f"archive_link_ttl_s: expected > 0, got {ttl_s}")
        self.ttl_s = ttl_s
        self._secret = secrets.token_bytes(32)

    def _sign(self, tenant: str, run_id: str, checkpoint_id: str, expires: int) -> str:
        msg = json.dumps([tenant, run_id, checkpoint_id, expires]).encode()
        return _b64(hmac.new(self._secret, msg, hashlib.sha256).digest())

    def new(self, tenant: str, run_id: str, checkpoint_id: str) -> tuple[str, float]:
        """A token for the checkpoint and when it expires (Unix time)."""
        expires = int(time.time() + self.ttl_s) + 1
        body = _b64(json.dumps([run_id, checkpoint_id, expires]).encode())
        return f"{body}.{self._sign(tenant, run_id, checkpoint_id, expires)}", float(expires)

    @staticmethod
    def target(token: str) -> tuple[str, str, int]:
        """``(run_id, checkpoint_id, expires)`` as the token states them (not yet verified).

        Raises:
            ApiError: 404 for a token that is not one of ours.
        """
        try:
            body, _ = token.split(".", 1)
            run_id, checkpoint_id, expires = json.loads(_unb64(body))
            if not (
                isinstance(run_id, str)
                and isinstance(checkpoint_id, str)
                and isinstance(expires, int)
            ):
                raise ValueError(token)
        except ValueError:
            raise ApiError(404, "unknown or expired archive link") from None
        return run_id, checkpoint_id, expires

    def verify(self, token: str, owner: str | None) -> tuple[str, str]:
        """``(run_id, checkpoint_id)`` of a valid token whose run ``owner`` (a tenant) signed it.

        Raises:
            ApiError: 404 when the token is forged, expired or its run has another owner.
        """
        run_id, checkpoint_id, expires = self.target(token)
        signature = token.split(".", 1)[1]
        expected = "" if owner is None else self._sign(owner, run_id, checkpoint_id, expires)
        if not hmac.compare_digest(signature, expected) or time.time() > expires:
            raise ApiError(404, "unknown or expired archive link")
        return run_id, checkpoint_id
