"""Starting and stopping a server in-process: uvicorn on a background thread."""

from __future__ import annotations

import logging
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from tinkjax._net import is_loopback_host
from tinkjax.server._auth import ARCHIVE_LINK_TTL_S
from tinkjax.server._conn import DEFAULT_HEADER_TIMEOUT_S, DEFAULT_IDLE_TIMEOUT_S
from tinkjax.server._faults import FaultConfig, FaultMiddleware
from tinkjax.server._scheduler import DEFAULT_SEQ_WINDOW

if TYPE_CHECKING:
    from tinkjax.server._models_registry import ServedModels

__all__ = ["ServerHandle", "is_loopback_host", "start"]


_log = logging.getLogger("tinkjax.server")


def _client_url(host: str, port: int) -> str:
    """A URL clients can use for a server bound to ``host``: a wildcard address
    (``0.0.0.0``, ``::``) is not one, so it is given as loopback."""
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


class ServerHandle:
    """A running local backend.

    Attributes:
        base_url: ``http://host:port`` (give it to clients as ``TINKER_BASE_URL``); loopback
            when the server is bound to every interface (``0.0.0.0``, ``::``).
        host: the bound address.
        port: the bound port.
        data_dir: where checkpoints and metadata live.
        faults: the live :class:`FaultConfig` (mutate ``faults.rules`` at run time).
        backend: the server's state (models, samplers, futures, scheduler), for tests.
    """

    def __init__(
        self,
        *,
        host: str,
        port: int,
        data_dir: Path,
        faults: FaultConfig,
        backend: Any,
        server: Any,
        thread: threading.Thread,
        temp_dir: Path | None,
    ) -> None:
        self.host = host
        self.port = port
        self.data_dir = data_dir
        self.faults = faults
        self.backend = backend
        self._server = server
        self._thread = thread
        self._temp_dir = temp_dir
        self._stopped = False
        self.base_url = _client_url(host, port)

    @property
    def app_state(self) -> Any:
        """Alias of :attr:`backend`."""
        return self.backend

    @property
    def scheduler(self) -> Any:
        """The request scheduler (``applied`` counts executions per ``(model_id, seq_id)``)."""
        return self.backend.scheduler

    def applied_count(self, model_id: str, seq_id: int) -> int:
        """How many times ``(model_id, seq_id)`` was executed (0 or 1 unless something broke)."""
        return int(self.backend.scheduler.applied_count(model_id, seq_id))

    @property
    def running(self) -> bool:
        """Whether the HTTP server thread is alive."""
        return self._thread.is_alive() and not self._stopped

    def stop(self) -> None:
        """Stop serving, stop the worker, close the store; remove the data dir if temporary."""
        if self._stopped:
            return
        self._stopped = True
        self._server.should_exit = True
        self.backend.futures.wake_all()
        self._thread.join(10)
        self.backend.stop()
        self.backend.store.close()
        if self._temp_dir is not None:
            shutil.rmtree(self._temp_dir, ignore_errors=True)

    def __enter__(self) -> ServerHandle:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"ServerHandle({self.base_url!r}, data_dir={str(self.data_dir)!r}, {state})"


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY on accepted sockets only for such sockets;
    # without it every response waits ~40 ms on delayed ACKs.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def start(
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    data_dir: str | Path | None = None,
    faults: FaultConfig | None = None,
    max_body_bytes: int = 64 * 2**20,
    seq_gap_timeout_s: float = 60.0,
    seq_window: int = DEFAULT_SEQ_WINDOW,
    long_poll_s: float = 25.0,
    models: ServedModels | None = None,
    mesh: Any = "auto",
    log_level: str = "warning",
    max_live_models: int | None = 128,
    session_timeout_s: float | None = 600.0,
    max_telemetry_bytes: int = 64 * 2**20,
    api_keys: Iterable[str] | None = None,
    insecure: bool = False,
    header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S,
    idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S,
    archive_link_ttl_s: float = ARCHIVE_LINK_TTL_S,
) -> ServerHandle:
    """Start a local Tinker-compatible backend on a background thread.

    Args:
        host: address to bind (loopback by default).
        port: TCP port; 0 picks a free one (see ``handle.port``).
        data_dir: checkpoints and metadata; ``None`` uses a temporary folder removed on stop.
        faults: fault-injection rules (off by default); mutable later via ``handle.faults``.
        max_body_bytes: larger request bodies are answered 413.
        seq_gap_timeout_s: how long requests wait behind a missing ``seq_id`` before failing.
        seq_window: a ``seq_id`` more than this far ahead of the model's expected one is
            refused (400).
        long_poll_s: how long ``retrieve_future`` holds a poll before answering 408.
        models: base models served (``None``: every preset of ``tinkjax.models.PRESETS``):
            preset names, and Hugging Face models from local folders as ``"NAME=PATH"``
            strings or a mapping ``{NAME: PATH}`` (``PATH`` ``None``: the preset ``NAME``).
        mesh: how Hugging Face models are sharded: ``"auto"`` (every local device, FSDP),
            ``"data=2,fsdp=4,tp=1"``-style sizes, a ``jax.sharding.Mesh``, or ``"none"``.
        log_level: uvicorn's log level.
        max_live_models: the most training models held in memory at once; one more
            ``create_model`` / ``load_weights`` is answered 429 naming the limit (``None``: none).
        session_timeout_s: a session with no heartbeat and no model request for this long has
            ended and its models are freed, as on ``finish`` (``None``: only ``finish`` ends one).
        max_telemetry_bytes: the most telemetry payload bytes kept (the oldest events go first).
        api_keys: the only API keys accepted; ``None``: any well-formed key, each its own tenant.
        insecure: allow binding an address other than loopback without ``api_keys``.
        header_timeout_s: a connection whose request head (line and headers) takes longer, or
            whose body pauses longer, is closed.
        idle_timeout_s: a keep-alive connection idle longer between requests is closed.
        archive_link_ttl_s: how long an archive download link stays valid.

    Returns:
        A :class:`ServerHandle`; use it as a context manager or call ``stop()``.

    Raises:
        ValueError: a limit out of range, a malformed key, or a non-loopback ``host`` without
            ``api_keys`` and without ``insecure``.
    """
    import uvicorn

    from tinkjax.server._app import AppConfig, build_app
    from tinkjax.server._auth import KeyPolicy
    from tinkjax.server._backend import Backend
    from tinkjax.server._conn import timed_h11
    from tinkjax.server._futures import FutureTable
    from tinkjax.server._store import Store

    if max_body_bytes < 1:
        raise ValueError(f"max_body_bytes: expected >= 1, got {max_body_bytes}")
    if seq_gap_timeout_s <= 0 or long_poll_s < 0:
        raise ValueError("seq_gap_timeout_s must be > 0 and long_poll_s >= 0")
    if seq_window < 1:
        raise ValueError(f"seq_window: expected >= 1, got {seq_window}")
    if not (header_timeout_s > 0 and idle_timeout_s > 0):
        raise ValueError(
            f"header_timeout_s ({header_timeout_s}) and idle_timeout_s ({idle_timeout_s}) "
            "must be > 0"
        )
    policy = KeyPolicy(api_keys)
    if not is_loopback_host(host) and not policy.restricted:
        if not insecure:
            raise ValueError(
                f"host {host!r} is reachable from other machines, and without api_keys any "
                "key is accepted: pass api_keys (tinkjax serve --api-keys FILE), bind "
                "127.0.0.1, or pass insecure=True (--insecure) to serve anyone who can connect"
            )
        _log.warning(
            "tinkjax server on %s without API keys: anyone who can reach it can use it", host
        )
    temp_dir = Path(tempfile.mkdtemp(prefix="tinkjax-server-")) if data_dir is None else None
    root = temp_dir if temp_dir is not None else Path(data_dir)  # type: ignore[arg-type]
    store = Store(root, max_telemetry_bytes=max_telemetry_bytes)
    backend = Backend(
        store, FutureTable(), seq_gap_timeout_s=seq_gap_timeout_s, seq_window=seq_window,
        models=models, max_live_models=max_live_models, session_timeout_s=session_timeout_s,
        mesh=mesh,
    )  # fmt: skip
    faults = faults if faults is not None else FaultConfig()
    inner: Any = build_app(
        backend,
        AppConfig(
            max_body_bytes=max_body_bytes, long_poll_s=long_poll_s, policy=policy,
            archive_link_ttl_s=archive_link_ttl_s,
        ),
    )  # fmt: skip
    app = FaultMiddleware(inner, faults)
    try:
        sock = _bind(host, port)
    except OSError:
        store.close()
        if temp_dir is not None:
            shutil.rmtree(temp_dir, ignore_errors=True)
        raise
    # log_config=None: uvicorn must not reconfigure the process's logging (the embedded
    # backend runs inside the user's process); its loggers propagate to the root logger.
    config = uvicorn.Config(
        app, log_level=log_level, log_config=None, lifespan="off", access_log=False,
        timeout_graceful_shutdown=2, timeout_keep_alive=idle_timeout_s,  # type: ignore[arg-type]
        http=timed_h11(header_timeout_s),
    )  # fmt: skip
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="tinkjax-http", daemon=True
    )
    backend.start()
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            backend.stop()
            store.close()
            sock.close()
            raise RuntimeError("the tinkjax server failed to start (see the log above)")
        time.sleep(0.005)
    bound_port = int(sock.getsockname()[1])
    return ServerHandle(
        host=host, port=bound_port, data_dir=root, faults=faults, backend=backend,
        server=server, thread=thread, temp_dir=temp_dir,
    )  # fmt: skip
