"""Signed, expiring download links to the files of an ``external_weights`` checkpoint.

``get_external_weights_urls`` answers one URL per file,
``/api/v1/downloads/{token}/{file}``, fetched with a plain GET and no key (as the service's
signed storage URLs are). The token states the run, checkpoint, version and expiry in the clear
and carries an HMAC-SHA256 (the standard library's :mod:`hmac`) of those, the file name and the
owning tenant under a secret of this server process. So a link

* opens only its own file of the version it was made for (an overwrite or delete ends it: 404);
* stops working at its expiry: 403 naming the time, after which a new call of
  ``get_external_weights_urls`` gives fresh links;
* cannot be forged or edited (404), nor outlive the server process (a restart draws a new
  secret: 404), nor serve another tenant's files.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from datetime import UTC, datetime

from tinkjax.server._errors import ApiError

__all__ = ["DownloadLinks", "LinkTarget"]

_NOT_A_LINK = "unknown download link (forged, edited, or made before the server restarted)"


def _now() -> float:
    return time.time()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class LinkTarget(tuple[str, str, str, int]):
    """``(run_id, checkpoint_id, version, expires)`` as a token states them."""

    __slots__ = ()

    @property
    def run_id(self) -> str:
        return self[0]

    @property
    def checkpoint_id(self) -> str:
        return self[1]

    @property
    def version(self) -> str:
        return self[2]

    @property
    def expires(self) -> int:
        return self[3]


class DownloadLinks:
    """Makes and checks download tokens.

    Args:
        ttl_s: how long a link stays valid (seconds, > 0).
    """

    def __init__(self, *, ttl_s: float) -> None:
        if not ttl_s > 0:
            raise ValueError(f"download link ttl_s: expected > 0, got {ttl_s}")
        self.ttl_s = ttl_s
        self._secret = secrets.token_bytes(32)

    def _sign(self, tenant: str, target: LinkTarget, file: str) -> str:
        msg = json.dumps(["download", tenant, *target, file]).encode()
        return _b64(hmac.new(self._secret, msg, hashlib.sha256).digest())

    def expiry(self) -> int:
        """The expiry (Unix seconds) of links made now."""
        return int(_now() + self.ttl_s) + 1

    def token(
        self, tenant: str, run_id: str, checkpoint_id: str, version: str, file: str, expires: int
    ) -> str:
        """The token of one file's link."""
        target = LinkTarget((run_id, checkpoint_id, version, expires))
        body = _b64(json.dumps(list(target)).encode())
        return f"{body}.{self._sign(tenant, target, file)}"

    @staticmethod
    def target(token: str) -> LinkTarget:
        """What ``token`` states (not yet verified).

        Raises:
            ApiError: 404 for a token that is not one of ours.
        """
        try:
            body, _ = token.split(".", 1)
            run_id, checkpoint_id, version, expires = json.loads(_unb64(body))
            if not (
                isinstance(run_id, str)
                and isinstance(checkpoint_id, str)
                and isinstance(version, str)
                and type(expires) is int
            ):
                raise ValueError(token)
        except ValueError:
            raise ApiError(404, _NOT_A_LINK) from None
        return LinkTarget((run_id, checkpoint_id, version, expires))

    def verify(self, token: str, file: str, owner: str | None) -> LinkTarget:
        """The target of a link to ``file`` signed for ``owner`` (the run's tenant now).

        Raises:
            ApiError: 404 when forged or edited (or the run has no owner), 403 when expired.
        """
        target = self.target(token)
        signature = token.split(".", 1)[1]
        expected = "" if owner is None else self._sign(owner, target, file)
        if not hmac.compare_digest(signature, expected):
            raise ApiError(404, _NOT_A_LINK)
        if _now() > target.expires:
            when = datetime.fromtimestamp(target.expires, UTC).isoformat()
            raise ApiError(
                403,
                f"download link expired at {when}; call get_external_weights_urls for new links",
                expired_at=when,
            )
        return target
