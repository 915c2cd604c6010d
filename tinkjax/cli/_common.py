"""What the client commands share: exit codes and errors, output formats, the connection.

**Exit codes** (documented in docs/cli.md, relied on by scripts):

====  ==============  =====================================================================
code  kind            when
====  ==============  =====================================================================
0                     success
1     ``error``       anything not below (an unexpected failure)
2     ``usage``       bad arguments or input files (argparse errors too), configuration
3     ``not_found``   the checkpoint, run or model does not exist (HTTP 404)
4     ``auth``        the key is missing, refused or lacks permission (401, 402, 403)
5     ``rejected``    the server refused the request (400, 409, 422, 429, a failed request)
6     ``server``      the server failed or could not be reached (5xx, connection, timeout)
130   ``interrupted`` Ctrl-C
====  ==============  =====================================================================

Every error is one line on stderr, ``tinkjax <command>: <kind>: <message>``; with
``-f json`` it is a JSON object ``{"error": {"kind", "message", "exit_code"}}`` instead.

**The connection.** With ``TINKER_API_KEY`` or ``TINKER_BASE_URL`` set (or ``--api-key`` /
``--base-url``), commands talk to that service. Otherwise they run the local backend in the
process on a *persistent* store: ``--data-dir``, else ``$TINKJAX_HOME``, else ``~/.tinkjax``.
The store's API key (its tenant) is generated once into ``<data dir>/cli-api-key`` (mode
0600); one process at a time uses a store (``<data dir>/cli.lock``; ``tinkjax serve`` takes it
too). The local backend of a store is started once per process and stopped at exit.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import secrets
import sys
import threading
import time
from collections.abc import Sequence
from contextlib import suppress
from pathlib import Path
from typing import IO, Any

__all__ = [
    "EXIT_AUTH",
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_REJECTED",
    "EXIT_SERVER",
    "EXIT_USAGE",
    "HOME_ENV",
    "CliError",
    "Connection",
    "add_connection_arguments",
    "add_format_arguments",
    "close_local_stores",
    "connect",
    "default_data_dir",
    "error_of",
    "hold_store_lock",
    "output_format",
    "print_error",
    "print_json",
    "print_table",
    "to_builtins",
]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_AUTH = 4
EXIT_REJECTED = 5
EXIT_SERVER = 6
EXIT_INTERRUPTED = 130

_KIND_CODES = {
    "error": EXIT_ERROR,
    "usage": EXIT_USAGE,
    "not_found": EXIT_NOT_FOUND,
    "auth": EXIT_AUTH,
    "rejected": EXIT_REJECTED,
    "server": EXIT_SERVER,
    "interrupted": EXIT_INTERRUPTED,
}

#: The environment variable naming the local store's folder.
HOME_ENV = "TINKJAX_HOME"
_KEY_FILE = "cli-api-key"
_LOCK_FILE = "cli.lock"


class CliError(Exception):
    """An error the command line reports as one line and an exit code (see the module doc).

    Args:
        message: what went wrong, naming the argument or resource and its value.
        kind: ``usage``, ``not_found``, ``auth``, ``rejected``, ``server`` or ``error``.
    """

    def __init__(self, message: str, kind: str = "error") -> None:
        if kind not in _KIND_CODES:
            raise ValueError(f"kind {kind!r} is not one of {sorted(_KIND_CODES)}")
        super().__init__(message)
        self.message = message
        self.kind = kind

    @property
    def exit_code(self) -> int:
        """The process exit status for this error."""
        return _KIND_CODES[self.kind]


def error_of(exc: BaseException) -> CliError:
    """The :class:`CliError` an exception from the SDK (or the OS) stands for."""
    from tinkjax import errors

    if isinstance(exc, CliError):
        return exc
    if isinstance(exc, KeyboardInterrupt):
        return CliError("interrupted", "interrupted")
    msg = str(exc) or type(exc).__name__
    if isinstance(exc, errors.NotFoundError):
        return CliError(msg, "not_found")
    if isinstance(
        exc, errors.AuthenticationError | errors.PermissionDeniedError | errors.BillingError
    ):
        return CliError(msg, "auth")
    if isinstance(exc, errors.InternalServerError | errors.APIConnectionError):
        return CliError(msg, "server")
    if isinstance(exc, errors.APIStatusError):
        return CliError(msg, "server" if exc.status_code >= 500 else "rejected")
    if isinstance(exc, errors.RequestFailedError):
        return CliError(msg, "rejected")
    if isinstance(exc, errors.ConfigurationError):
        return CliError(msg, "usage")
    if isinstance(exc, FileExistsError | FileNotFoundError | IsADirectoryError):
        return CliError(msg, "usage")
    return CliError(f"{type(exc).__name__}: {msg}", "error")


def print_error(command: str, err: CliError, fmt: str, stream: IO[str] | None = None) -> None:
    """Report ``err`` on stderr: one line, or one JSON object with ``-f json``."""
    stream = sys.stderr if stream is None else stream
    if fmt == "json":
        payload = {"error": {"kind": err.kind, "message": err.message, "exit_code": err.exit_code}}
        stream.write(json.dumps(payload) + "\n")
    else:
        stream.write(f"tinkjax {command}: {err.kind}: {err.message}\n")
    stream.flush()


# ---------------------------------------------------------------------------- output
def add_format_arguments(p: argparse.ArgumentParser) -> None:
    """``-f/--format table|json`` and ``--json`` (the same as ``-f json``)."""
    p.add_argument(
        "-f",
        "--format",
        dest="format",
        choices=["table", "json"],
        default=None,
        help="output format (default: table; also a global option: tinkjax -f json ...)",
    )
    p.add_argument("--json", dest="format", action="store_const", const="json", help="-f json")


def output_format(args: argparse.Namespace) -> str:
    """The effective format: the command's ``-f``, else the global one, else ``table``."""
    return str(getattr(args, "format", None) or getattr(args, "global_format", None) or "table")


def to_builtins(obj: Any) -> Any:
    """A JSON-ready value of a tinkjax type (datetimes as ISO 8601 strings)."""
    import msgspec

    return msgspec.to_builtins(obj)


def print_json(data: Any, stream: IO[str] | None = None) -> None:
    """``data`` as indented JSON on stdout."""
    stream = sys.stdout if stream is None else stream
    stream.write(json.dumps(data, indent=2, default=str) + "\n")


def print_table(
    columns: Sequence[str],
    rows: Sequence[Sequence[object]],
    *,
    title: str | None = None,
    stream: IO[str] | None = None,
) -> None:
    """An aligned plain-text table (``None`` cells print as ``-``)."""
    stream = sys.stdout if stream is None else stream
    cells = [[str(c) for c in columns]] + [
        ["-" if v is None else str(v) for v in row] for row in rows
    ]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    if title:
        stream.write(title + "\n")
    for n, row in enumerate(cells):
        stream.write("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        stream.write("\n")
        if n == 0:
            stream.write("  ".join("-" * w for w in widths) + "\n")


# ---------------------------------------------------------------------------- connection
def add_connection_arguments(p: argparse.ArgumentParser) -> None:
    """``--base-url``, ``--api-key``, ``--data-dir``, ``--timeout``."""
    g = p.add_argument_group("connection")
    g.add_argument(
        "--base-url",
        default=None,
        help="the service (default: $TINKER_BASE_URL; with neither it nor an API key: the "
        "local backend on the --data-dir store)",
    )
    g.add_argument("--api-key", default=None, help="the API key (default: $TINKER_API_KEY)")
    g.add_argument(
        "--data-dir",
        default=None,
        metavar="DIR",
        help=f"the local backend's persistent store (default: ${HOME_ENV}, else ~/.tinkjax); "
        "only without a service",
    )
    g.add_argument(
        "--timeout", type=float, default=None, help="HTTP read timeout in seconds (default 60)"
    )


def default_data_dir() -> Path:
    """``$TINKJAX_HOME``, else ``~/.tinkjax``."""
    env = os.environ.get(HOME_ENV)
    return Path(env).expanduser() if env else Path.home() / ".tinkjax"


class Connection:
    """Where a command's clients go: a service, or a local store started in this process.

    Attributes:
        base_url: the service root.
        api_key: the key to send.
        data_dir: the local store's folder (``None`` for a service).
        timeout: HTTP read timeout (``None``: the SDK's default).
    """

    def __init__(
        self,
        base_url: str | None,
        api_key: str | None,
        data_dir: Path | None,
        timeout: float | None,
    ) -> None:
        self.base_url = base_url
        self.api_key = api_key
        self.data_dir = data_dir
        self.timeout = timeout

    @property
    def local(self) -> bool:
        """The local store (no service configured)."""
        return self.data_dir is not None

    def service(self) -> Any:
        """A new ``ServiceClient`` (the caller closes it)."""
        from tinkjax.client import ServiceClient

        return ServiceClient(base_url=self.base_url, api_key=self.api_key, timeout=self.timeout)

    def rest(self) -> Any:
        """A new ``RestClient`` with the command's ``--timeout`` (the caller closes it)."""
        from tinkjax.client import RestClient, Transport, resolve_config

        config = resolve_config(base_url=self.base_url, api_key=self.api_key, timeout=self.timeout)
        return RestClient.from_transport(Transport(config))


_stores_lock = threading.Lock()
_stores: dict[Path, tuple[Any, str, Any]] = {}  # data dir -> (server handle, key, lock file)


def connect(args: argparse.Namespace) -> Connection:
    """The :class:`Connection` the arguments (and environment) ask for.

    Raises:
        CliError: ``--data-dir`` with a service, or the store is unusable or in use.
    """
    base_url = getattr(args, "base_url", None) or os.environ.get("TINKER_BASE_URL") or None
    api_key = getattr(args, "api_key", None) or os.environ.get("TINKER_API_KEY") or None
    timeout = getattr(args, "timeout", None)
    data_dir = getattr(args, "data_dir", None)
    if (base_url is not None and base_url != "local") or api_key is not None:
        if data_dir is not None:
            raise CliError(
                f"--data-dir {data_dir!r} is for the local backend, but a service is configured "
                "(TINKER_API_KEY / TINKER_BASE_URL or --api-key / --base-url)",
                "usage",
            )
        return Connection(base_url, api_key, None, timeout)
    root = (Path(data_dir).expanduser() if data_dir else default_data_dir()).resolve()
    url, key = _local_store(root)
    return Connection(url, key, root, timeout)


def hold_store_lock(root: Path, *, wait_s: float = 0.0) -> Any:
    """Lock the store ``root`` for this process; returns the open lock file (closing it
    releases the lock). ``tinkjax serve`` and the client commands take it.

    Raises:
        CliError: another process holds it for longer than ``wait_s`` seconds.
    """
    root.mkdir(parents=True, exist_ok=True)
    f = open(root / _LOCK_FILE, "a+")  # noqa: SIM115 - held open for the lock's lifetime
    try:
        import fcntl
    except ImportError:  # pragma: no cover - no advisory locks on this platform
        return f
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() >= deadline:
                f.seek(0)
                holder = f.read().strip() or "another process"
                f.close()
                raise CliError(
                    f"the local store {str(root)!r} is in use by {holder}; wait for it, use "
                    "another --data-dir, or point TINKER_BASE_URL at the server using it",
                    "usage",
                ) from None
            time.sleep(0.2)
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()}\n")
    f.flush()
    return f


def _store_key(root: Path) -> str:
    path = root / _KEY_FILE
    try:
        key = path.read_text("utf-8").strip()
    except FileNotFoundError:
        key = ""
    if not key:
        key = "tml-cli-" + secrets.token_urlsafe(24)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(key + "\n")
    return key


def _local_store(root: Path) -> tuple[str, str]:
    with _stores_lock:
        if root in _stores:
            handle, key, _ = _stores[root]
            return str(handle.base_url), key
        lock = hold_store_lock(root, wait_s=float(os.environ.get("TINKJAX_STORE_WAIT", "30")))
        try:
            from tinkjax.server import start

            key = _store_key(root)  # clients mask it in logs once configured with it
            handle = start(data_dir=root, api_keys=[key])
        except BaseException:
            lock.close()
            raise
        if not _stores:
            atexit.register(close_local_stores)
        _stores[root] = (handle, key, lock)
        return str(handle.base_url), key


def close_local_stores() -> None:
    """Stop every local backend this process started and release their stores."""
    with _stores_lock:
        while _stores:
            _, (handle, _, lock) = _stores.popitem()
            try:
                handle.stop()
            finally:
                with suppress(OSError):
                    lock.close()
