"""The installed ``tinkjax`` command: exit codes, and a store that outlives the process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tinkjax.cli import main
from tinkjax.cli._common import EXIT_USAGE, CliError, close_local_stores, hold_store_lock


def _tinkjax(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).with_name("tinkjax")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "tinkjax.cli"]
    base = {k: v for k, v in os.environ.items() if k not in ("TINKER_API_KEY", "TINKER_BASE_URL")}
    return subprocess.run(
        [*cmd, *argv], capture_output=True, text=True, timeout=240,
        env={**base, "JAX_PLATFORMS": "cpu", **(env or {})},
    )  # fmt: skip


def test_the_store_outlives_the_process_and_is_locked_while_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ("TINKER_API_KEY", "TINKER_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    store = tmp_path / "store"
    meta = tmp_path / "ck.json"
    argv = ["checkpoint", "--base-model", "tinkjax/bytelm-micro", "--rank", "4"]
    assert main([*argv, "--output", str(meta), "--data-dir", str(store)]) == 0
    path = json.loads(meta.read_text())["weights_path"]

    # this process still holds the store: another one is refused at once, naming the holder
    busy = _tinkjax("models", "--data-dir", str(store), env={"TINKJAX_STORE_WAIT": "0"})
    assert busy.returncode == EXIT_USAGE, busy.stderr
    assert f"in use by pid {os.getpid()}" in busy.stderr
    assert "TINKER_BASE_URL" in busy.stderr  # how to share it: through one server
    close_local_stores()

    # ... and once released, a new process sees the checkpoint this one saved
    listed = _tinkjax("-f", "json", "checkpoint", "list", "--data-dir", str(store))
    assert listed.returncode == 0, listed.stderr
    assert [c["tinker_path"] for c in json.loads(listed.stdout)["checkpoints"]] == [path]


def test_serve_holds_its_store(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tinkjax.cli", "serve", "--data-dir", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("tinkjax server listening on ")
        with pytest.raises(CliError, match=f"in use by pid {proc.pid}") as info:
            hold_store_lock(tmp_path)
        assert info.value.exit_code == EXIT_USAGE
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    hold_store_lock(tmp_path).close()  # released with the process


def test_usage_error_exit_code_of_the_installed_command() -> None:
    proc = _tinkjax("run", "--prompt", "x", "--prompt-file", "y", "--base-model", "m")
    assert proc.returncode == EXIT_USAGE
    assert proc.stderr == "tinkjax run: usage: give exactly one of --prompt and --prompt-file\n"
    assert proc.stdout == ""
