"""Each request is validated once, here, at the edge, into a value the jobs and the runtime trust.

Every check raises :class:`ApiError` (a 4xx naming the field and the value), so bad input is
answered before anything is queued and changes nothing. The results are typed values:
``FwdBwdItem`` of :class:`~tinkjax.models.ValidDatum` (the runtime does not check them again),
:class:`~tinkjax.models.AdamHyper` (checked by its constructor), :class:`SamplePlan`, and the
checkpoint of a ``tinker://`` path. Errors the model layer raises for bad values (``ValueError``)
are turned into 400s here and nowhere else; past this module a ``ValueError`` is a server bug.

``tinkjax.models`` (and JAX with it) is imported inside the functions: the HTTP server starts
answering while the worker thread imports the model stack (``_models_registry.warmup``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec
import numpy as np

from tinkjax.server._errors import ApiError
from tinkjax.types import AdamParams, Datum, LoraConfig, SampleRequest, parse_tinker_path

if TYPE_CHECKING:
    from tinkjax.models import AdamHyper, FwdBwdItem, ModelConfig, SampleJob

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "MAX_METADATA_BYTES",
    "MAX_METADATA_ITEM_BYTES",
    "MAX_NUM_SAMPLES",
    "MAX_TOPK_LOGPROBS",
    "MAX_TTL_S",
    "SamplePlan",
    "adam_hyper",
    "check_float",
    "check_int",
    "check_lora",
    "check_tinker_path",
    "check_ttl",
    "check_user_metadata",
    "fwdbwd_item",
    "sample_plan",
    "server_filled_inputs",
    "stop_sequences",
]

#: ``max_tokens`` used when a sample request leaves it unset (capped by the context length).
DEFAULT_MAX_TOKENS = 64
#: Most samples one request may ask for.
MAX_NUM_SAMPLES = 1024
#: Largest ``topk_prompt_logprobs`` accepted (also at most the vocabulary size).
MAX_TOPK_LOGPROBS = 256
#: Longest checkpoint ``ttl_seconds`` accepted (about ten years).
MAX_TTL_S = 10 * 366 * 86400
#: Largest ``user_metadata`` entry (its key and value, JSON-encoded) accepted.
MAX_METADATA_ITEM_BYTES = 16 * 1024
#: Largest ``user_metadata`` object (JSON-encoded) accepted.
MAX_METADATA_BYTES = 64 * 1024


def check_int(value: Any, field: str, *, low: int | None = None, high: int | None = None) -> int:
    """``value`` as an int in ``[low, high]``; 400 naming ``field`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(400, f"{field}: expected an integer, got {value!r}", field=field)
    if (low is not None and value < low) or (high is not None and value > high):
        raise ApiError(400, f"{field}: {value} outside [{low}, {high}]", field=field)
    return value


def check_float(value: Any, field: str) -> float:
    """``value`` as a finite float; 400 naming ``field`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ApiError(400, f"{field}: expected a finite number, got {value!r}", field=field)
    return float(value)


def check_user_metadata(value: Any, field: str = "user_metadata") -> None:
    """``None`` or an object within :data:`MAX_METADATA_ITEM_BYTES` per entry and
    :data:`MAX_METADATA_BYTES` in all (JSON-encoded); 400 naming the entry otherwise."""
    if value is None:
        return
    if not isinstance(value, dict):
        raise ApiError(400, f"{field}: expected an object, got {type(value).__name__}", field=field)
    total = 2
    for key, item in value.items():
        try:
            size = len(msgspec.json.encode(key)) + len(msgspec.json.encode(item)) + 2
        except (TypeError, ValueError, OverflowError) as exc:
            raise ApiError(400, f"{field}[{key!r}]: {exc}", field=f"{field}[{key!r}]") from None
        if size > MAX_METADATA_ITEM_BYTES:
            raise ApiError(
                400,
                f"{field}[{key!r}]: {size} bytes, over the limit of {MAX_METADATA_ITEM_BYTES} "
                "bytes per entry",
                field=f"{field}[{key!r}]",
            )
        total += size
    if total > MAX_METADATA_BYTES:
        raise ApiError(
            400,
            f"{field}: {total} bytes in {len(value)} entries, over the limit of "
            f"{MAX_METADATA_BYTES} bytes",
            field=field,
        )


def check_ttl(ttl: Any) -> None:
    """A checkpoint ``ttl_seconds``: ``None`` or an int in ``[1, MAX_TTL_S]``."""
    if ttl is not None:
        check_int(ttl, "ttl_seconds", low=1, high=MAX_TTL_S)


def check_tinker_path(path: Any, field: str) -> str:
    """A well-formed ``tinker://`` checkpoint path (its kind is checked by the store)."""
    if not isinstance(path, str):
        raise ApiError(400, f"{field}: expected a tinker:// path, got {path!r}", field=field)
    try:
        parse_tinker_path(path)
    except ValueError as exc:
        raise ApiError(400, f"{field}: {exc}", field=field) from None
    return path


def check_lora(lora: LoraConfig) -> None:
    """A ``create_model`` LoRA configuration."""
    check_int(lora.rank, "lora_config.rank", low=1, high=64)
    if lora.seed is not None:
        check_int(lora.seed, "lora_config.seed", low=0, high=2**64 - 1)
    if not (lora.train_attn or lora.train_mlp or lora.train_unembed):
        raise ApiError(
            400,
            "lora_config: at least one of train_attn, train_mlp, train_unembed must be true",
            field="lora_config",
        )


def adam_hyper(params: AdamParams | None) -> AdamHyper:
    """Tinker's ``AdamParams`` (defaults when ``None``) as a checked ``AdamHyper``."""
    from tinkjax.models import ADAM_KEYS, AdamHyper

    params = params if params is not None else AdamParams()
    values = {key: check_float(getattr(params, key), f"adam_params.{key}") for key in ADAM_KEYS}
    try:
        return AdamHyper(**values)
    except ValueError as exc:
        field = str(exc).split(":", 1)[0]
        raise ApiError(400, str(exc), field=field) from None


def server_filled_inputs(loss_fn: Any) -> tuple[str, ...]:
    """The wire inputs of built-in loss ``loss_fn`` the server fills from recorded sequences
    (none for other losses, or a name that is not a loss: ``fwdbwd_item`` refuses it)."""
    from tinkjax.losses import LOSS_FUNCTIONS

    definition = LOSS_FUNCTIONS.get(loss_fn) if isinstance(loss_fn, str) else None
    return () if definition is None else definition.server_filled


def fwdbwd_item(
    cfg: ModelConfig,
    model_id: str,
    data: Sequence[Datum],
    loss_fn: Any,
    loss_fn_config: Mapping[str, Any] | None,
) -> FwdBwdItem:
    """A forward(/backward) request as a runtime item of checked datums."""
    from tinkjax.losses import get_loss_definition, resolve_loss_config
    from tinkjax.models import DatumArrays, FwdBwdItem, validate_datum

    try:
        get_loss_definition(loss_fn)
    except ValueError as exc:
        raise ApiError(400, str(exc), field="loss_fn") from None
    try:
        resolved = resolve_loss_config(loss_fn, loss_fn_config)
    except ValueError as exc:
        raise ApiError(400, str(exc), field="loss_fn_config") from None
    config = {key: check_float(v, f"loss_fn_config[{key!r}]") for key, v in resolved.items()}
    datums = []
    for i, datum in enumerate(data):
        try:
            tokens = datum.model_input.to_numpy()
        except ValueError as exc:
            raise ApiError(400, f"data[{i}].model_input: {exc}", field="model_input") from None
        try:
            inputs = {k: td.to_numpy() for k, td in datum.loss_fn_inputs.items()}
        except ValueError as exc:
            field = f"data[{i}].loss_fn_inputs"
            raise ApiError(400, f"{field}: {exc}", field=field) from None
        arrays = DatumArrays(input_tokens=np.asarray(tokens), loss_fn_inputs=inputs)
        try:
            valid = validate_datum(
                arrays, where=f"data[{i}]", loss_fn=loss_fn, vocab=cfg.vocab_size,
                max_len=cfg.max_seq_len, dtype=np.dtype(np.float32),
            )  # fmt: skip
        except ValueError as exc:
            raise ApiError(400, str(exc), field=f"data[{i}]") from None
        datums.append(valid)
    return FwdBwdItem(adapter_id=model_id, datums=datums, loss_fn=loss_fn, loss_fn_config=config)


def stop_sequences(
    stop: Any, vocab: int, eos: int | None, encode: Callable[[str], list[int]] | None = None
) -> list[list[int]]:
    """Tinker's ``stop``: ``None`` → end-of-text (none when the tokenizer has no EOS);
    str / [str] → their tokens (``encode``; default: their UTF-8 bytes, the byte tokenizer's);
    [int] → single-token stops; ``[]`` → none."""
    if stop is None:
        return [] if eos is None else [[eos]]
    if isinstance(stop, str):
        stop = [stop]
    out: list[list[int]] = []
    for i, s in enumerate(stop):
        field = f"sampling_params.stop[{i}]"
        if isinstance(s, str):
            if not s:
                raise ApiError(400, f"{field}: empty stop string", field=field)
            tokens = list(s.encode("utf-8")) if encode is None else encode(s)
            if not tokens:
                raise ApiError(400, f"{field}: {s!r} encodes to no tokens", field=field)
            out.append(tokens)
        elif isinstance(s, int) and not isinstance(s, bool):
            if not 0 <= s < vocab:
                raise ApiError(400, f"{field}: token {s} outside [0, {vocab})", field=field)
            out.append([s])
        else:
            raise ApiError(400, f"{field}: expected a string or token id, got {s!r}", field=field)
    return out


@dataclass(frozen=True)
class SamplePlan:
    """A checked ``/asample`` request: the runtime job (without weights) and how to answer it.

    Attributes:
        job: the sampling job; ``snapshot`` is filled in on the worker.
        n_prompt: prompt length.
        last_n: ``prompt_logprobs_last_n`` (earlier prompt logprobs are answered NaN, and
            earlier top-k rows the empty-cell sentinels).
    """

    job: SampleJob
    n_prompt: int
    last_n: int | None


def _topk_prompt(req: SampleRequest, vocab: int) -> int:
    """``topk_prompt_logprobs``: an int in ``[0, min(vocab, MAX_TOPK_LOGPROBS)]``."""
    return check_int(
        req.topk_prompt_logprobs, "topk_prompt_logprobs", low=0,
        high=min(vocab, MAX_TOPK_LOGPROBS),
    )  # fmt: skip


def _unsupported(req: SampleRequest) -> None:
    for name in ("topk_sample_logprobs", "prompt_alt_tokens_k"):
        value = check_int(getattr(req, name), name, low=0)
        if value:
            raise ApiError(
                400, f"{name}: {value} is not supported by the local backend (use 0)", field=name
            )
    if req.target_prompt_logprobs is not None:
        raise ApiError(
            400, "target_prompt_logprobs: not supported by the local backend",
            field="target_prompt_logprobs",
        )  # fmt: skip


def _positive(value: float, field: str, *, top: bool) -> float:
    if top and not 0 < value <= 1:
        raise ApiError(400, f"{field}: expected a value in (0, 1], got {value}", field=field)
    if not top and value < 0:
        raise ApiError(400, f"{field}: expected >= 0, got {value}", field=field)
    return value


def sample_plan(req: SampleRequest, cfg: ModelConfig, tokenizer: Any = None) -> SamplePlan:
    """``/asample`` checked against the model ``cfg`` (``tokenizer``: the one stop strings
    and the default end-of-text stop come from; ``None``: the byte tokenizer)."""
    from tinkjax.models import EOS_TOKEN_ID, SampleJob

    try:
        prompt = np.asarray(req.prompt.to_numpy(), dtype=np.int64)
    except ValueError as exc:
        raise ApiError(400, f"prompt: {exc}", field="prompt") from None
    n_prompt = int(prompt.shape[0])
    if n_prompt == 0:
        raise ApiError(400, "prompt: empty prompt", field="prompt")
    bad = (prompt < 0) | (prompt >= cfg.vocab_size)
    if bad.any():
        raise ApiError(
            400, f"prompt: token {int(prompt[bad][0])} outside [0, {cfg.vocab_size})",
            field="prompt",
        )  # fmt: skip
    if n_prompt >= cfg.max_seq_len:
        raise ApiError(
            400, f"prompt: {n_prompt} tokens leave no room in max_seq_len {cfg.max_seq_len}",
            field="prompt",
        )  # fmt: skip
    check_int(req.num_samples, "num_samples", low=1, high=MAX_NUM_SAMPLES)
    params = req.sampling_params
    room = cfg.max_seq_len - n_prompt
    if params.max_tokens is None:
        max_tokens = min(DEFAULT_MAX_TOKENS, room)
    else:
        max_tokens = check_int(params.max_tokens, "sampling_params.max_tokens", low=0)
        if max_tokens > room:
            raise ApiError(
                400,
                f"sampling_params.max_tokens: {max_tokens} with a {n_prompt}-token prompt "
                f"exceeds max_seq_len {cfg.max_seq_len}",
                field="sampling_params.max_tokens",
            )
    field = "sampling_params.temperature"
    temperature = _positive(check_float(params.temperature, field), field, top=False)
    field = "sampling_params.top_p"
    top_p = _positive(check_float(params.top_p, field), field, top=True)
    top_k = check_int(params.top_k, "sampling_params.top_k")
    if params.seed is not None:
        check_int(params.seed, "sampling_params.seed", low=0, high=2**64 - 1)
    if tokenizer is None:
        stops = stop_sequences(params.stop, cfg.vocab_size, EOS_TOKEN_ID)
    else:
        stops = stop_sequences(
            params.stop, cfg.vocab_size, tokenizer.eos_token_id, tokenizer.encode
        )
    _unsupported(req)
    topk = _topk_prompt(req, cfg.vocab_size)
    last_n = req.prompt_logprobs_last_n
    if last_n is not None:
        check_int(last_n, "prompt_logprobs_last_n", low=0)
    job = SampleJob(
        snapshot=None, prompt=prompt.astype(np.int32), num_samples=req.num_samples,
        max_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
        seed=params.seed, stop_token_seqs=stops,
        include_prompt_logprobs=bool(req.prompt_logprobs) or last_n is not None,
        topk_prompt_logprobs=topk,
        checked_for=cfg,  # every field checked above: the runtime does not check it again
    )  # fmt: skip
    return SamplePlan(job=job, n_prompt=n_prompt, last_n=last_n)
