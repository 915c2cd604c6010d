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


def test_serve_refuses_every_interface_without_api_keys(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "tinkjax.cli", "serve", "--host", "0.0.0.0", "--data-dir",
         str(tmp_path)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
        env={**os.environ, "JAX_PLATFORMS": "cpu", "TINKJAX_API_KEYS_FILE": ""},
    )  # fmt: skip
    assert proc.returncode == 2
    assert "--api-keys" in proc.stderr
    assert "--insecure" in proc.stderr
    assert "listening" not in proc.stdout


def test_serve_with_a_keys_file_from_the_environment(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("# ours\ntml-alice\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tinkjax.cli", "serve", "--host", "0.0.0.0", "--data-dir",
         str(tmp_path / "data")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
        env={**os.environ, "JAX_PLATFORMS": "cpu", "TINKJAX_API_KEYS_FILE": str(keys)},
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        # bound to every interface, the URL to use is loopback's, never http://0.0.0.0:PORT
        assert line.startswith("tinkjax server listening on http://127.0.0.1:"), line
        url = line.split()[-1]
        rest = [proc.stdout.readline() for _ in range(4)]
        assert any("from other machines" in r for r in rest), rest
        assert any(f"1 API key(s) of {keys}" in r for r in rest), rest
        caps = f"{url}/api/v1/get_server_capabilities"
        assert httpx.get(caps, headers={"X-API-Key": "tml-alice"}, timeout=10).status_code == 200
        assert httpx.get(caps, headers={"X-API-Key": "tml-bob"}, timeout=10).status_code == 401
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
