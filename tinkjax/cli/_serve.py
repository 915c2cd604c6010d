"""``tinkjax serve``: run the local backend in the foreground until Ctrl-C."""

from __future__ import annotations

import argparse
import os
import socket
import sys
import threading

__all__ = ["API_KEYS_ENV", "HELP", "add_arguments", "run"]

HELP = "run the local Tinker-compatible backend (loopback by default)"

#: The keys file used when ``--api-keys`` is not given.
API_KEYS_ENV = "TINKJAX_API_KEYS_FILE"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``tinkjax serve``."""
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=0, help="TCP port; 0 picks a free one (default 0)"
    )
    parser.add_argument(
        "--data-dir",
        default=None,
        help="folder for checkpoints and metadata (default: a temporary folder, removed on exit)",
    )
    parser.add_argument(
        "--max-live-models",
        type=int,
        default=128,
        help="training models held in memory at once; more are refused with 429 (default 128;"
        " 0: no limit)",
    )
    parser.add_argument(
        "--session-timeout",
        type=float,
        default=600.0,
        help="seconds without heartbeat or request after which a session's models are freed"
        " (default 600; 0: never)",
    )
    parser.add_argument(
        "--api-keys",
        default=None,
        metavar="FILE",
        help="accept only the API keys listed in FILE, one per line ('#' comments); default: "
        f"${API_KEYS_ENV}, else any well-formed key, each its own tenant",
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="allow a --host other than loopback without --api-keys (anyone who can connect "
        "can use the server)",
    )
    parser.add_argument(
        "--header-timeout", type=float, default=10.0, metavar="SECONDS",
        help="close a connection whose request head takes longer, or whose body pauses "
        "longer (default 10)",
    )  # fmt: skip
    parser.add_argument(
        "--idle-timeout", type=float, default=60.0, metavar="SECONDS",
        help="close a keep-alive connection idle longer between requests (default 60)",
    )  # fmt: skip
    parser.add_argument(
        "--model", action="append", default=[], metavar="NAME=PATH",
        help="also serve the Hugging Face model (Llama, Qwen2, Qwen3) in the local folder PATH "
        "as NAME (repeatable; nothing is downloaded)",
    )  # fmt: skip
    parser.add_argument(
        "--mesh", default="auto", metavar="SPEC",
        help="how Hugging Face models are sharded over the local devices: 'auto' (every "
        "device, FSDP), 'none' (one device), or sizes such as 'data=2,fsdp=2,tp=2'",
    )  # fmt: skip
    parser.add_argument(
        "--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"]
    )


def _served(models: list[str]) -> dict[str, str | None] | None:
    """Every preset plus each ``--model NAME=PATH`` (``None`` without any)."""
    if not models:
        return None
    from tinkjax.models import PRESETS

    served: dict[str, str | None] = dict.fromkeys(PRESETS)
    for entry in models:
        name, sep, path = entry.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--model: expected NAME=PATH, got {entry!r}")
        if name in served:
            raise ValueError(f"--model: {name!r} is already served")
        served[name] = path
    return served


def run(args: argparse.Namespace) -> int:
    """Start the server, print its URL, serve until interrupted."""
    import logging

    from tinkjax.server import load_api_keys, start

    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    keys_file = args.api_keys or os.environ.get(API_KEYS_ENV) or None
    lock = None
    if args.data_dir is not None:  # the store is this process's (see tinkjax.cli._common)
        from pathlib import Path

        from tinkjax.cli._common import CliError, hold_store_lock

        try:
            lock = hold_store_lock(Path(args.data_dir).expanduser().resolve())
        except CliError as exc:
            print(f"tinkjax serve: {exc.message}", file=sys.stderr, flush=True)
            return 2
    try:
        keys = None if keys_file is None else load_api_keys(keys_file)
        handle = start(
            host=args.host, port=args.port, data_dir=args.data_dir, log_level=args.log_level,
            max_live_models=args.max_live_models or None,
            session_timeout_s=args.session_timeout or None,
            api_keys=keys, insecure=args.insecure, header_timeout_s=args.header_timeout,
            idle_timeout_s=args.idle_timeout, models=_served(args.model), mesh=args.mesh,
        )  # fmt: skip
    except (OSError, ValueError) as exc:
        print(f"tinkjax serve: {exc}", file=sys.stderr, flush=True)
        if lock is not None:
            lock.close()
        return 2
    print(f"tinkjax server listening on {handle.base_url}", flush=True)
    if args.host in ("", "0.0.0.0", "::"):  # every interface: the URL above is loopback
        print(
            f"  bound to every interface; from other machines: "
            f"http://{socket.gethostname()}:{handle.port}",
            flush=True,
        )
    print(f"  data dir: {handle.data_dir}", flush=True)
    if keys is None:
        print("  any well-formed API key is accepted (each key is its own tenant)", flush=True)
        print(f"  export TINKER_BASE_URL={handle.base_url} TINKER_API_KEY=tml-local", flush=True)
    else:
        print(f"  accepting the {len(keys)} API key(s) of {keys_file}", flush=True)
        print(f"  export TINKER_BASE_URL={handle.base_url} TINKER_API_KEY=<a key of that file>")
    if args.insecure and keys is None:
        print(
            f"WARNING: serving {args.host} without --api-keys: anyone who can reach port "
            f"{handle.port} can use this server and its data",
            file=sys.stderr,
            flush=True,
        )
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        print("stopping", file=sys.stderr, flush=True)
    finally:
        handle.stop()
        if lock is not None:
            lock.close()
    return 0
