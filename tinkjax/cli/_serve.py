"""``tinkjax serve``: run the local backend in the foreground until Ctrl-C."""

from __future__ import annotations

import argparse
import sys
import threading

__all__ = ["HELP", "add_arguments", "run"]

HELP = "run the local Tinker-compatible backend (loopback by default)"


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
        "--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"]
    )


def run(args: argparse.Namespace) -> int:
    """Start the server, print its URL, serve until interrupted."""
    import logging

    from tinkjax.server import start

    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    handle = start(
        host=args.host, port=args.port, data_dir=args.data_dir, log_level=args.log_level,
        max_live_models=args.max_live_models or None,
        session_timeout_s=args.session_timeout or None,
    )  # fmt: skip
    print(f"tinkjax server listening on {handle.base_url}", flush=True)
    print(f"  data dir: {handle.data_dir}", flush=True)
    print(f"  export TINKER_BASE_URL={handle.base_url} TINKER_API_KEY=tml-local", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        print("stopping", file=sys.stderr, flush=True)
    finally:
        handle.stop()
    return 0
