"""``tinkjax serve`` prints its URL, serves, and stops on Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from tinkjax.cli import build_parser


def test_parser_has_serve_with_options() -> None:
    args = build_parser().parse_args(["serve", "--port", "0", "--data-dir", "/tmp/x"])
    assert (args.command, args.host, args.port, args.data_dir) == (
        "serve",
        "127.0.0.1",
        0,
        "/tmp/x",
    )


def test_serve_prints_url_and_stops_on_sigint(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tinkjax.cli", "serve", "--port", "0", "--data-dir", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("tinkjax server listening on http://127.0.0.1:"), line
        url = line.split()[-1]
        assert httpx.get(f"{url}/api/v1/healthz", timeout=10).json() == {"status": "ok"}
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert (tmp_path / "meta.sqlite").is_file()
