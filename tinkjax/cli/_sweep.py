"""``tinkjax sweep CONFIG.toml``: a sweep from a TOML file, as :func:`tinkjax.sweep.run` runs it.

The file holds the arguments of :func:`tinkjax.sweep.run` (``steps``, ``directory``,
``checkpoint_every``, ``max_in_flight``, ``base_url``) and the tables ``[base]``, ``[grid]``,
``[[runs]]`` and ``[retry]`` (``max_attempts``, ``delay_s``, ``backoff``), plus ``[loop]``, the
step function:

- ``kind = "supervised"`` with ``text = "FILE"`` (a local UTF-8 file cut into ``seq_len``-token
  next-token windows, byte-tokenized: the ``tinkjax/`` byte models) or ``dataset =
  "module:function"`` (``function(config) -> list[Datum]``), and ``batch_size``;
- ``kind = "rl"`` with ``prompts = [...]``, ``reward = "module:function"``
  (``function(prompt_tokens, completion_tokens, config) -> float``), ``group_size``,
  ``prompts_per_step``, ``max_tokens``, ``temperature``;
- ``kind = "module:function"``: your own step function ``function(run, step)``.

Relative paths are relative to the TOML file; ``directory`` defaults to the file's name without
``.toml``, beside it. Running the same command again resumes the sweep.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["HELP", "add_arguments", "load_config", "run"]

HELP = "run (or resume) a sweep described by a TOML file"

_TOP = {
    "steps", "directory", "checkpoint_every", "max_in_flight", "base_url",
    "base", "grid", "runs", "retry", "loop",
}  # fmt: skip


def _import(ref: str, where: str) -> Callable[..., Any]:
    from tinkjax.sweep import SweepConfigError

    module, _, name = ref.partition(":")
    if not module or not name:
        raise SweepConfigError(f"{where}: expected 'module:function', got {ref!r}")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise SweepConfigError(f"{where}: cannot import {ref!r} ({exc})") from None
    if not callable(fn):
        raise SweepConfigError(f"{where}: {ref!r} is not callable")
    return fn  # type: ignore[no-any-return]


def _text_dataset(path: Path, seq_len: int) -> Callable[[Mapping[str, Any]], list[Any]]:
    import numpy as np

    from tinkjax.sweep import SweepConfigError
    from tinkjax.types import Datum, ModelInput, TensorData

    def build(config: Mapping[str, Any]) -> list[Any]:
        if not str(config["base_model"]).startswith("tinkjax/"):
            raise SweepConfigError(
                "loop.text is byte-tokenized, for the tinkjax/ byte models; for "
                f"{config['base_model']!r} give loop.dataset = 'module:function'"
            )
        data = np.frombuffer(path.read_bytes(), np.uint8).astype(np.int64)
        stride = max(seq_len // 2, 1)
        return [
            Datum(
                model_input=ModelInput.from_ints(data[s : s + seq_len].tolist()),
                loss_fn_inputs={
                    "target_tokens": TensorData.from_numpy(data[s + 1 : s + seq_len + 1]),
                    "weights": TensorData.from_numpy(np.ones(seq_len, np.float32)),
                },
            )
            for s in range(0, len(data) - seq_len - 1, stride)
        ]

    return build


def _step_fn(loop: Mapping[str, Any], root: Path) -> Callable[..., Any]:
    from tinkjax import sweep

    kind = loop.get("kind", "supervised")
    if kind == "supervised":
        if ("text" in loop) == ("dataset" in loop):
            raise sweep.SweepConfigError("[loop] supervised: give exactly one of text, dataset")
        if "text" in loop:
            path = (root / str(loop["text"])).resolve()
            if not path.is_file():
                raise sweep.SweepConfigError(f"loop.text: no such file {path}")
            dataset: Any = _text_dataset(path, int(loop.get("seq_len", 64)))
        else:
            dataset = _import(str(loop["dataset"]), "loop.dataset")
        return sweep.supervised(dataset, batch_size=int(loop.get("batch_size", 8)))
    if kind == "rl":
        return sweep.rl(
            list(loop.get("prompts", [])),
            _import(str(loop.get("reward", "")), "loop.reward"),
            group_size=int(loop.get("group_size", 4)),
            prompts_per_step=int(loop.get("prompts_per_step", 2)),
            max_tokens=int(loop.get("max_tokens", 16)),
            temperature=float(loop.get("temperature", 1.0)),
        )
    return _import(str(kind), "loop.kind")


def load_config(path: str | Path) -> dict[str, Any]:
    """The keyword arguments of :func:`tinkjax.sweep.run` described by a TOML file.

    Raises:
        SweepConfigError: unreadable TOML, an unknown top-level key, a bad ``[loop]``.
    """
    from tinkjax import sweep

    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text("utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise sweep.SweepConfigError(f"{path}: {exc}") from None
    unknown = sorted(set(doc) - _TOP)
    if unknown:
        raise sweep.SweepConfigError(f"{path}: unknown keys {unknown} (known: {sorted(_TOP)})")
    if "steps" not in doc:
        raise sweep.SweepConfigError(f"{path}: 'steps' is required")
    root = path.resolve().parent
    kwargs: dict[str, Any] = {
        "step": _step_fn(doc.get("loop", {}), root),
        "steps": int(doc["steps"]),
        "base": doc.get("base"),
        "grid": doc.get("grid"),
        "runs": doc.get("runs"),
        "directory": root / str(doc.get("directory", path.stem)),
        "checkpoint_every": doc.get("checkpoint_every"),
        "max_in_flight": int(doc.get("max_in_flight", 32)),
        "base_url": doc.get("base_url"),
    }
    if "retry" in doc:
        try:
            kwargs["retry"] = sweep.RetryPolicy(**doc["retry"])
        except TypeError as exc:
            raise sweep.SweepConfigError(f"[retry]: {exc}") from None
    return kwargs


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``tinkjax sweep`` options."""
    p.add_argument("config", help="the sweep's TOML file")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """``tinkjax sweep``: 0 when every run completed or stopped early, 1 when one failed."""
    from tinkjax import sweep
    from tinkjax.errors import ConfigurationError

    try:
        kwargs = load_config(args.config)
        results = sweep.run(**kwargs, progress=not args.no_progress)
    except ConfigurationError as exc:
        print(f"tinkjax sweep: {exc}", file=sys.stderr)
        return 2
    counts: dict[str, int] = {}
    for status in results.status.values():
        counts[status] = counts.get(status, 0) + 1
    print(
        f"{len(results.status)} runs: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    )
    for failure in results.failures.values():
        print(f"  {failure.run_id} failed after {failure.attempts} attempt(s): {failure.error}")
    print(f"results: {results.directory}/results.jsonl")
    return 1 if results.failures else 0
