"""Ready step functions for the common sweeps, driven by the run config.

Both read the run config's ``optimizer`` (learning rate, schedule, Adam settings), ``loss``
(a built-in loss name and its config), ``regularizers`` (a table per regularizer: ``kind`` — a
built-in of :mod:`tinkjax.regularizers`, the table's name when absent — ``weight`` and the
constructor's other arguments) and ``track_grad_norms``; so every one of those is a leaf a sweep
can vary. Each step is deterministic in ``(config, step)``: a resumed run sees the batches and
sampling seeds an uninterrupted one would.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from tinkjax.sweep._errors import SweepConfigError
from tinkjax.sweep._results import StepResult
from tinkjax.types import AdamParams, Datum, ModelInput, SamplingParams, TensorData

if TYPE_CHECKING:
    from tinkjax.engine import Regularizer
    from tinkjax.sweep._driver import Run

__all__ = ["adam_params", "learning_rate", "regularizers_of", "rl", "supervised"]

_SCHEDULES = ("constant", "linear", "cosine")


def learning_rate(config: Mapping[str, Any], step: int, total_steps: int) -> float:
    """The learning rate of ``step`` (0-based) of ``total_steps``: ``optimizer.learning_rate``
    after a linear warm-up of ``optimizer.warmup_steps``, then held (``constant``) or decayed
    to 0 at the last step (``linear``, ``cosine``), per ``optimizer.schedule``.

    Raises:
        SweepConfigError: an unknown schedule or a negative warm-up.
    """
    opt = config["optimizer"]
    base = float(opt["learning_rate"])
    schedule = opt.get("schedule", "constant")
    warmup = int(opt.get("warmup_steps", 0))
    if schedule not in _SCHEDULES:
        raise SweepConfigError(
            f"optimizer.schedule: expected one of {list(_SCHEDULES)}, got {schedule!r}"
        )
    if warmup < 0:
        raise SweepConfigError(f"optimizer.warmup_steps: expected >= 0, got {warmup}")
    if step < warmup:
        return base * (step + 1) / warmup
    if schedule == "constant":
        return base
    span = max(total_steps - warmup, 1)
    progress = min((step - warmup) / span, 1.0)
    if schedule == "linear":
        return base * (1.0 - progress)
    return base * 0.5 * (1.0 + math.cos(math.pi * progress))


def adam_params(config: Mapping[str, Any], lr: float) -> AdamParams:
    """The run's Adam settings (``optimizer.*``) at learning rate ``lr``."""
    opt = config["optimizer"]
    return AdamParams(
        learning_rate=lr,
        beta1=float(opt.get("beta1", 0.9)),
        beta2=float(opt.get("beta2", 0.95)),
        eps=float(opt.get("eps", 1e-12)),
        weight_decay=float(opt.get("weight_decay", 0.0)),
        grad_clip_norm=float(opt.get("grad_clip_norm", 0.0)),
    )


def regularizers_of(config: Mapping[str, Any]) -> list[Regularizer]:
    """The run's regularizers, built from its ``regularizers`` tables (in table order).

    Raises:
        SweepConfigError: an unknown ``kind`` or arguments its constructor does not take.
    """
    from tinkjax import regularizers as builtins

    out = []
    for name, table in config.get("regularizers", {}).items():
        if not isinstance(table, Mapping):
            raise SweepConfigError(f"regularizers.{name}: expected a table, got {table!r:.60}")
        args = dict(table)
        kind = args.pop("kind", name)
        make = getattr(builtins, str(kind), None)
        if make is None or kind.endswith("_value") or not callable(make) or kind.startswith("_"):
            raise SweepConfigError(
                f"regularizers.{name}.kind: {kind!r} is not a built-in regularizer of "
                "tinkjax.regularizers (write a step function for your own)"
            )
        try:
            out.append(make(name=name, **args))
        except TypeError as exc:
            raise SweepConfigError(f"regularizers.{name}: {exc}") from None
    return out


def _loss(config: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    loss = config["loss"]
    return str(loss["name"]), dict(loss.get("config", {}))


async def _train(run: Run, step: int, data: list[Datum]) -> StepResult:
    """``forward_backward_custom`` with the config's loss and regularizers, then an Adam step
    at the scheduled learning rate."""
    name, loss_config = _loss(run.config)
    out = await run.training.forward_backward_custom_async(
        data,
        name,
        regularizers=regularizers_of(run.config),
        loss_fn_config=loss_config or None,
        track_grad_norms=bool(run.config.get("track_grad_norms", True)),
    )
    lr = learning_rate(run.config, step, run.steps)
    fb = await out
    await (await run.training.optim_step_async(adam_params(run.config, lr)))
    return StepResult(output=fb, learning_rate=lr)


StepFn = Callable[["Run", int], Any]


def supervised(
    dataset: Sequence[Datum] | Callable[[Mapping[str, Any]], Sequence[Datum]],
    *,
    batch_size: int = 8,
    shuffle: bool = True,
) -> StepFn:
    """Supervised training over ``dataset`` (or ``dataset(config)``, built once per run).

    Step ``s`` trains on the ``s``-th batch of the epochs' concatenation (each epoch in an order
    drawn from ``seed`` and the epoch number when ``shuffle``), with the config's custom loss
    (``loss.name`` is any built-in loss; the datums carry its inputs) and regularizers.

    Raises:
        SweepConfigError: ``batch_size`` < 1 or an empty dataset (when the run starts).
    """
    if batch_size < 1:
        raise SweepConfigError(f"batch_size: expected >= 1, got {batch_size}")

    async def step_fn(run: Run, step: int) -> StepResult:
        data = run.state.get("dataset")
        if data is None:
            data = list(dataset(run.config) if callable(dataset) else dataset)
            if not data:
                raise SweepConfigError("supervised(): the dataset has no datums")
            run.state["dataset"] = data
        n = len(data)
        per_epoch = max(n // batch_size, 1)
        epoch, index = divmod(step, per_epoch)
        order = (
            np.random.default_rng([int(run.config.get("seed", 0)), epoch]).permutation(n)
            if shuffle
            else np.arange(n)
        )
        batch = [data[int(i)] for i in np.resize(order, (index + 1) * batch_size)[-batch_size:]]
        return await _train(run, step, batch)

    step_fn.__qualname__ = f"supervised(batch_size={batch_size})"
    return step_fn


def rl(
    prompts: Sequence[str | Sequence[int]],
    reward: Callable[[list[int], list[int], Mapping[str, Any]], float],
    *,
    group_size: int = 4,
    prompts_per_step: int = 2,
    max_tokens: int = 16,
    temperature: float = 1.0,
) -> StepFn:
    """An RL loop: sample → reward → custom loss → Adam step.

    Each step samples ``group_size`` completions of ``prompts_per_step`` prompts (taken in turn)
    from the run's current weights, scores each with ``reward(prompt_tokens,
    completion_tokens, config)``, centres the rewards within each group (the advantages), and
    trains on the completions with the config's loss (``loss.name``: ``importance_sampling``,
    ``ppo``, ``cispo``, … — anything taking ``logprobs`` and ``advantages``) and regularizers.
    Sampling seeds come from ``(seed, step)``. String prompts are encoded with the run's
    tokenizer.

    Raises:
        SweepConfigError: no prompts, or ``group_size`` / ``prompts_per_step`` < 1.
    """
    if not prompts:
        raise SweepConfigError("rl(): prompts is empty")
    if group_size < 1 or prompts_per_step < 1:
        raise SweepConfigError(
            f"rl(): group_size and prompts_per_step must be >= 1, got {group_size} and "
            f"{prompts_per_step}"
        )

    async def step_fn(run: Run, step: int) -> StepResult:
        if _loss(run.config)[0] == "cross_entropy":
            raise SweepConfigError(
                "rl(): loss.name is cross_entropy; set it to a policy-gradient loss "
                "(importance_sampling, ppo, cispo, ...) in the base config"
            )
        encoded = run.state.get("prompts")
        if encoded is None:
            tokenizer = None
            encoded = []
            for p in prompts:
                if isinstance(p, str):
                    tokenizer = tokenizer or run.training.get_tokenizer()
                    encoded.append(list(tokenizer.encode(p)))
                else:
                    encoded.append([int(t) for t in p])
            run.state["prompts"] = encoded
        sampler = await run.training.save_weights_and_get_sampling_client_async()
        chosen = [
            encoded[(step * prompts_per_step + i) % len(encoded)] for i in range(prompts_per_step)
        ]
        seed = int(run.config.get("seed", 0))
        responses = [
            await sampler.sample_async(
                ModelInput.from_ints(prompt),
                group_size,
                SamplingParams(
                    max_tokens=max_tokens,
                    temperature=temperature,
                    seed=seed * 1_000_003 + step * 101 + i,
                ),
            )
            for i, prompt in enumerate(chosen)
        ]
        data: list[Datum] = []
        rewards: list[float] = []
        for prompt, resp in zip(chosen, responses, strict=True):
            group = [float(reward(prompt, seq.tokens, run.config)) for seq in resp.sequences]
            mean = sum(group) / len(group)
            rewards.extend(group)
            for seq, r in zip(resp.sequences, group, strict=True):
                if not seq.tokens:
                    continue
                data.append(_rl_datum(prompt, seq.tokens, seq.logprobs or [], r - mean))
        if not data:
            raise RuntimeError(f"step {step}: every sampled completion was empty")
        result = await _train(run, step, data)
        return StepResult(
            output=result.output,
            learning_rate=result.learning_rate,
            metrics={"reward_mean": float(np.mean(rewards)), "reward_std": float(np.std(rewards))},
        )

    step_fn.__qualname__ = f"rl(group_size={group_size})"
    return step_fn


def _rl_datum(prompt: list[int], completion: list[int], logprobs: list[float], adv: float) -> Datum:
    """The completion's tokens as targets after the prompt; prompt positions carry zero
    advantage (and so no gradient)."""
    tokens = prompt + completion
    n = len(tokens) - 1
    start = len(prompt) - 1
    sampler_lp = np.zeros(n, np.float32)
    sampler_lp[start:] = np.asarray(logprobs[: n - start], np.float32)
    advantages = np.zeros(n, np.float32)
    advantages[start:] = adv
    return Datum(
        model_input=ModelInput.from_ints(tokens[:-1]),
        loss_fn_inputs={
            "target_tokens": TensorData.from_numpy(np.asarray(tokens[1:], np.int64)),
            "logprobs": TensorData.from_numpy(sampler_lp),
            "advantages": TensorData.from_numpy(advantages),
        },
    )
