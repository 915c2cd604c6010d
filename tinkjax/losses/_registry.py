"""The registry of built-in losses: wire names, inputs, config keys, and one dispatcher.

Wire keys (``Datum.loss_fn_inputs``) map to keyword arguments of the loss functions; note the
wire key ``logprobs`` is the *sampler's* logprobs ``q`` (argument ``sampler_logprobs``), while
the learner's logprobs are computed by the model from ``target_tokens``. Input keys a loss does
not read are ignored (clients may send extra keys, e.g. ``weights`` with ``ppo``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TypeVar

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from tinkjax.losses._functions import (
    cispo,
    cross_entropy,
    dro,
    gspo,
    importance_sampling,
    ppo,
    stable_reinforce,
)

__all__ = [
    "LOSS_FUNCTIONS",
    "LOSS_SUM_METRIC",
    "LossDefinition",
    "check_loss_inputs",
    "compute_elementwise_loss",
    "get_loss_definition",
    "loss_metrics",
    "resolve_loss_config",
]

LOSS_SUM_METRIC = "loss:sum"


_V = TypeVar("_V")


def _frozen(mapping: Mapping[str, _V]) -> Mapping[str, _V]:
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True)
class LossDefinition:
    """One built-in loss.

    Attributes:
        name: the wire name (``loss_fn``).
        fn: the per-token loss function (``tinkjax.losses.<name>``).
        required_inputs: wire keys every datum must carry, ``target_tokens`` first.
        input_arguments: wire key -> keyword argument of ``fn`` (every key but
            ``target_tokens``, which the model turns into the ``logprobs`` argument).
        config_defaults: optional ``loss_fn_config`` keys and their defaults.
        required_config: ``loss_fn_config`` keys without a default.
        uses_segments: whether ``fn`` takes ``segment_ids`` / ``num_segments``.
        server_filled: wire inputs the server computes itself (from the provenance spans and
            what it recorded at sampling time) in place of whatever the request sends.
        positive_config: ``loss_fn_config`` keys whose (number) values must be > 0.
    """

    name: str
    fn: Callable[..., jax.Array]
    required_inputs: tuple[str, ...]
    input_arguments: Mapping[str, str]
    config_defaults: Mapping[str, float] = field(default_factory=lambda: _frozen({}))
    required_config: tuple[str, ...] = ()
    uses_segments: bool = False
    server_filled: tuple[str, ...] = ()
    positive_config: tuple[str, ...] = ()

    @property
    def config_keys(self) -> frozenset[str]:
        """Every accepted ``loss_fn_config`` key."""
        return frozenset(self.config_defaults) | frozenset(self.required_config)


_RL_ARGS = {"logprobs": "sampler_logprobs", "advantages": "advantages"}
_RL_INPUTS = ("target_tokens", "logprobs", "advantages")
_CLIP_DEFAULTS = {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2}

LOSS_FUNCTIONS: Mapping[str, LossDefinition] = MappingProxyType(
    {
        d.name: d
        for d in (
            LossDefinition(
                "cross_entropy",
                cross_entropy,
                ("target_tokens", "weights"),
                _frozen({"weights": "weights"}),
            ),
            LossDefinition(
                "importance_sampling",
                importance_sampling,
                _RL_INPUTS,
                _frozen(_RL_ARGS),
            ),
            LossDefinition(
                "ppo",
                ppo,
                _RL_INPUTS,
                _frozen(_RL_ARGS),
                _frozen(_CLIP_DEFAULTS),
            ),
            LossDefinition(
                "cispo",
                cispo,
                _RL_INPUTS,
                _frozen(_RL_ARGS),
                _frozen(_CLIP_DEFAULTS),
            ),
            LossDefinition(
                "dro",
                dro,
                _RL_INPUTS,
                _frozen(_RL_ARGS),
                required_config=("beta",),
            ),
            LossDefinition(
                "gspo",
                gspo,
                (*_RL_INPUTS, "sequence_ratio_mask"),
                _frozen({**_RL_ARGS, "sequence_ratio_mask": "sequence_ratio_mask"}),
                _frozen(_CLIP_DEFAULTS),
                uses_segments=True,
            ),
            LossDefinition(
                "stable_reinforce",
                stable_reinforce,
                (*_RL_INPUTS, "sampled_mask"),
                _frozen({**_RL_ARGS, "sampled_mask": "sampled_mask"}),
                _frozen({"clip_high_threshold": 2.0}),
                server_filled=("logprobs", "sampled_mask"),
                positive_config=("clip_high_threshold",),
            ),
        )
    }
)


def get_loss_definition(name: str) -> LossDefinition:
    """The definition of a built-in loss; ``ValueError`` naming the known ones otherwise."""
    try:
        return LOSS_FUNCTIONS[name]
    except KeyError:
        known = ", ".join(sorted(LOSS_FUNCTIONS))
        raise ValueError(f"loss_fn: unknown loss {name!r}; known losses: {known}") from None


def resolve_loss_config(name: str, config: Mapping[str, ArrayLike] | None) -> dict[str, ArrayLike]:
    """``loss_fn_config`` merged over the defaults, after checking every key.

    Raises:
        ValueError: unknown loss, unknown config key, a required key (``dro``'s ``beta``)
            missing, or a key that must be positive (``stable_reinforce``'s
            ``clip_high_threshold``) that is not.
    """
    definition = get_loss_definition(name)
    given = dict(config or {})
    unknown = sorted(set(given) - definition.config_keys)
    if unknown:
        accepted = ", ".join(sorted(definition.config_keys)) or "none"
        raise ValueError(
            f"loss_fn_config: unknown key(s) {unknown} for loss {name!r}; accepted: {accepted}"
        )
    missing = [k for k in definition.required_config if k not in given]
    if missing:
        raise ValueError(f"loss_fn_config: loss {name!r} requires {missing}")
    for key in definition.positive_config:
        value = given.get(key)
        if isinstance(value, int | float) and not value > 0:
            raise ValueError(
                f"loss_fn_config[{key!r}]: expected a number > 0 for loss {name!r}, got {value!r}"
            )
    return {**definition.config_defaults, **given}


def check_loss_inputs(name: str, keys: frozenset[str] | set[str]) -> None:
    """``ValueError`` naming the wire inputs of loss ``name`` missing from ``keys``."""
    definition = get_loss_definition(name)
    missing = [k for k in definition.required_inputs if k not in keys]
    if missing:
        raise ValueError(f"loss_fn_inputs: loss {name!r} requires {missing}, got {sorted(keys)}")


def compute_elementwise_loss(
    name: str,
    logprobs: jax.Array,
    inputs: Mapping[str, ArrayLike],
    config: Mapping[str, ArrayLike] | None,
    *,
    segment_ids: jax.Array | None = None,
    num_segments: int | None = None,
) -> jax.Array:
    """Per-token loss of built-in loss ``name`` (jit-safe: ``name`` and keys are static).

    Args:
        name: the wire name of the loss.
        logprobs: ``[...]`` learner target-token logprobs.
        inputs: wire key -> ``[...]`` array (``target_tokens`` may be present; it is not read).
        config: ``loss_fn_config`` (values may be floats or arrays broadcastable to ``[...]``).
        segment_ids: ``[...]`` int sequence id per token (``gspo`` only; ``None`` = one
            sequence).
        num_segments: static number of sequences (with ``segment_ids``).

    Returns:
        ``[...]`` per-token loss; Tinker's loss is its sum.
    """
    definition = get_loss_definition(name)
    resolved = resolve_loss_config(name, config)
    missing = [k for k in definition.input_arguments if k not in inputs]
    if missing:
        raise ValueError(f"loss_fn_inputs: loss {name!r} requires {missing}, got {sorted(inputs)}")
    kwargs: dict[str, object] = {
        arg: inputs[key] for key, arg in definition.input_arguments.items()
    }
    if definition.uses_segments:
        kwargs.update(segment_ids=segment_ids, num_segments=num_segments)
    return definition.fn(logprobs, **kwargs, **resolved)


def loss_metrics(elementwise_loss: jax.Array) -> dict[str, jax.Array]:
    """The ``forward_backward`` metrics of a per-token loss: ``{"loss:sum": sum}``.

    Keys are exactly ``name:reduction``; ``loss:sum`` is the plain sum over every token and
    datum (no mean, no normalisation).
    """
    return {LOSS_SUM_METRIC: jnp.sum(elementwise_loss)}
