"""Regularizers' async ``prepare`` steps: awaiting them, and packing what they return.

``prepare(data)`` does a regularizer's I/O (a reward model, a database) before the program
runs; every prepare of a step runs concurrently, each under its own ``prepare_timeout``. It
returns ``{key: one value per datum}``; :func:`pack_prepared` lays each value onto the packed
batch (a scalar per datum → ``[B]``, a logprob-shaped array → token-shaped), and the program
passes the arrays to the regularizer's function as keyword arguments.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from tinkjax.engine._errors import EngineInputError, RegularizerError
from tinkjax.engine._pack import PackedBatch, pack_per_datum
from tinkjax.engine._term_specs import Regularizer

__all__ = ["Prepared", "pack_prepared", "run_prepares"]

#: Per regularizer with a ``prepare`` step (by name), what it returned.
Prepared = dict[str, Mapping[str, Sequence[npt.ArrayLike]]]


async def run_prepares(regs: Sequence[Regularizer], data: Sequence[Any]) -> Prepared:
    """Await every regularizer's ``prepare(data)`` concurrently.

    Raises:
        RegularizerError: a ``prepare`` step failed or timed out (names the regularizer).
    """

    async def one(reg: Regularizer) -> Mapping[str, Sequence[npt.ArrayLike]]:
        assert reg.prepare is not None
        try:
            return await asyncio.wait_for(reg.prepare(data), timeout=reg.prepare_timeout)
        except TimeoutError as exc:
            raise RegularizerError(
                f"regularizer {reg.name!r}: prepare timed out after {reg.prepare_timeout} s",
                name=reg.name,
            ) from exc
        except Exception as exc:
            raise RegularizerError(
                f"regularizer {reg.name!r}: prepare failed: {type(exc).__name__}: {exc}",
                name=reg.name,
            ) from exc

    waiting = [reg for reg in regs if reg.prepare is not None]
    results = await asyncio.gather(*(one(reg) for reg in waiting), return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return {reg.name: result for reg, result in zip(waiting, results, strict=True)}  # type: ignore[misc]


def pack_prepared(
    reg: Regularizer,
    result: Mapping[str, Sequence[npt.ArrayLike]],
    packed: PackedBatch,
    dtype: np.dtype[Any],
) -> dict[str, npt.NDArray[Any]]:
    """What ``reg``'s prepare returned, packed like the batch.

    Raises:
        RegularizerError: not a mapping, a key that is no identifier or clashes with a
            parameter or static option, or a value of the wrong count or shape.
    """
    if not isinstance(result, Mapping):
        raise RegularizerError(
            f"regularizer {reg.name!r}: prepare must return a mapping of arrays, "
            f"got {type(result).__name__}",
            name=reg.name,
        )
    taken = set(reg.param_names) | {k for k, _ in reg.static_key}
    out = {}
    for key, values in result.items():
        if key in taken or not isinstance(key, str) or not key.isidentifier():
            raise RegularizerError(
                f"regularizer {reg.name!r}: prepare returned key {key!r}, which is not an "
                "identifier or clashes with a parameter or static option",
                name=reg.name,
            )
        try:
            out[key] = pack_per_datum(
                values, packed, dtype=dtype, what=f"regularizer {reg.name!r} prepare[{key!r}]"
            )
        except EngineInputError as exc:
            raise RegularizerError(str(exc), name=reg.name) from exc
    return out
