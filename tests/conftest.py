"""Shared test configuration.

JAX runs with strict dtype promotion in the tests and with the persistent compilation cache in
``.jax_cache`` at the repository root, so repeated runs (and CI reruns) compile little.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TINKJAX_JAX_CACHE", str(Path(__file__).resolve().parents[1] / ".jax_cache"))
os.environ.setdefault("TINKER_TELEMETRY", "0")

import jax

from tinkjax._jaxcfg import enable_compilation_cache

jax.config.update("jax_numpy_rank_promotion", "raise")
enable_compilation_cache()
