"""age (filippo.io/age) encryption of exported files, through the ``pyrage`` library.

``save_weights_external`` may name age recipients: native ``age1...`` X25519 keys or SSH public
keys (``ssh-ed25519 ...``, ``ssh-rsa ...``). Every exported file is then encrypted to all of them
and stored with an ``.age`` suffix; ``age -d -i <identity>`` (or ``pyrage.decrypt``) reads it.
No cryptography is written here: parsing and encryption are ``pyrage``'s (bindings to the Rust
``age`` crate), an optional dependency (``pip install 'tinkjax[age]'``).
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any

from tinkjax.server._errors import ApiError

__all__ = ["AGE_SUFFIX", "MAX_RECIPIENTS", "Recipients", "parse_recipients"]

AGE_SUFFIX = ".age"
#: The most recipients one export may name (as the service allows).
MAX_RECIPIENTS = 10
_FIELD = "age_encryption_recipients"


class Recipients:
    """Parsed age recipients; :meth:`encrypt` encrypts one file's bytes to all of them."""

    def __init__(self, pyrage: Any, recipients: list[Any]) -> None:
        self._pyrage = pyrage
        self._recipients = recipients

    def __len__(self) -> int:
        return len(self._recipients)

    def encrypt(self, data: bytes) -> bytes:
        """``data`` as an age file (binary format) readable by any of the recipients."""
        out: bytes = self._pyrage.encrypt(data, self._recipients)
        return out


def _load_pyrage() -> Any:
    try:
        return importlib.import_module("pyrage")
    except ImportError:
        raise ApiError(
            400,
            f"{_FIELD}: encrypting exports needs the 'pyrage' package on the server, which is "
            "not installed (pip install 'tinkjax[age]'); save without recipients or install it",
            field=_FIELD,
        ) from None


def parse_recipients(values: Sequence[Any] | None) -> Recipients | None:
    """The recipients of a request (``None``: no encryption).

    Raises:
        ApiError: 400 naming the field and value: not a list, more than
            :data:`MAX_RECIPIENTS`, an empty list, an entry that is not a valid age or SSH
            recipient, or ``pyrage`` missing on the server.
    """
    if values is None:
        return None
    if not isinstance(values, list) or not values:
        raise ApiError(
            400, f"{_FIELD}: expected a non-empty list of recipients or null, got {values!r}",
            field=_FIELD,
        )  # fmt: skip
    if len(values) > MAX_RECIPIENTS:
        raise ApiError(
            400, f"{_FIELD}: at most {MAX_RECIPIENTS} recipients, got {len(values)}", field=_FIELD
        )
    pyrage = _load_pyrage()
    parsed = []
    for i, value in enumerate(values):
        if not isinstance(value, str):
            raise ApiError(400, f"{_FIELD}[{i}]: expected a string, got {value!r}", field=_FIELD)
        text = value.strip()
        module = pyrage.ssh if text.startswith("ssh-") else pyrage.x25519
        try:
            parsed.append(module.Recipient.from_str(text))
        except (pyrage.RecipientError, ValueError) as exc:
            raise ApiError(
                400,
                f"{_FIELD}[{i}]: {value[:80]!r} is not an age recipient (age1...) or SSH public "
                f"key ({exc})",
                field=_FIELD,
            ) from None
    return Recipients(pyrage, parsed)
