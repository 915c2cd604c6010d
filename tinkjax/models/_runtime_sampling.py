"""Sampling of ``ModelRuntime``: request checks, padding and bucketing, and the PRNG seed."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

from tinkjax.models._batching import bucket_length, bucket_pow2, bucket_rows
from tinkjax.models._compiled import release_compile_memory, sample_jit
from tinkjax.models._config import ModelConfig
from tinkjax.models._transformer import forward, merge_lora
from tinkjax.models._types import (
    NonFiniteResultError,
    SampledArrays,
    SampleJob,
    SampleOutput,
)

#: Token id and logprob of a top-k cell with nothing in it (prompt position 0).
TOPK_EMPTY_ID, TOPK_EMPTY_LOGPROB = 0, -99999.0


def _prompt_topk_core(
    config: ModelConfig,
    k: int,
    base: dict[str, jax.Array],
    lora: dict[str, tuple[jax.Array, jax.Array]] | None,
    scale: jax.Array,
    prompt: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """``(ids [Tp, k] int32, logprobs [Tp, k] float32)``: row ``t`` is the top ``k`` of
    ``log_softmax`` of the logits at position ``t`` (the distribution of token ``t + 1``)."""
    weights = base if lora is None else merge_lora(base, lora, scale[0])
    logits, _ = forward(config, weights, prompt[None, :])
    logprobs = jax.nn.log_softmax(logits[0].astype(jnp.float32), axis=-1)
    values, ids = jax.lax.top_k(logprobs, k)
    return ids.astype(jnp.int32), values


_prompt_topk_jit = jax.jit(_prompt_topk_core, static_argnames=("config", "k"))


def fresh_seed() -> int:
    return int.from_bytes(os.urandom(4), "little")


def _prng_key(seed: int) -> jax.Array:
    if not 0 <= seed < 2**64:
        raise ValueError(f"seed: {seed} outside [0, 2**64)")
    return jax.random.fold_in(jax.random.key(seed & 0xFFFFFFFF), seed >> 32)


class SamplingMixin:
    """The sampling methods of :class:`~tinkjax.models.ModelRuntime` (which supplies the rest)."""

    if TYPE_CHECKING:
        config: ModelConfig
        base_model: str
        _base: dict[str, jax.Array]
        _np_dtype: np.dtype[Any]

    # ----------------------------------------------------------------- sampling

    def sample(self, request: SampleJob) -> SampleOutput:
        """Samples ``num_samples`` completions of one prompt (prefill once, shared KV cache).

        Each sampled token's logprob is ``log_softmax(logits)[token]`` under the raw model
        (temperature 1, unfiltered), so it is comparable with training logprobs. A completion
        that ends with one of ``stop_token_seqs`` keeps the stop tokens and has stop reason
        ``"stop"``; otherwise it has ``max_tokens`` tokens and reason ``"length"``. Same seed,
        same tokens; the samples of one request differ (each row has its own key).

        Raises:
            ValueError: bad prompt tokens, lengths or sampling parameters.
            NonFiniteResultError: the logprobs are not finite (weights holding NaN or inf).
        """
        if request.checked_for == self.config:  # validated once, at the server's edge
            prompt = np.asarray(request.prompt)
            n_prompt = int(prompt.shape[0])
        else:
            prompt, n_prompt = self._check_sample(request)
        snap = request.snapshot
        p_pad = bucket_length(n_prompt)
        gen_len = max(16, bucket_pow2(request.max_tokens))
        padded = np.zeros((p_pad,), np.int32)
        padded[:n_prompt] = prompt
        stops = [list(s) for s in request.stop_token_seqs]
        width = bucket_pow2(max((len(s) for s in stops), default=1))
        stop_arr = np.full((bucket_pow2(len(stops)), width), -2, np.int32)
        stop_lens = np.zeros((stop_arr.shape[0],), np.int32)
        for i, s in enumerate(stops):
            stop_arr[i, width - len(s) :] = s
            stop_lens[i] = len(s)
        seed = fresh_seed() if request.seed is None else request.seed
        tokens, logprobs, lengths, stopped, prompt_lp = sample_jit(
            config=self.config,
            n_rows=bucket_rows(request.num_samples),
            gen_len=gen_len,
            base=self._base,
            lora=None if snap is None else dict(snap.weights),
            scale=np.asarray([1.0 if snap is None else snap.scale], self._np_dtype),
            prompt=padded,
            prompt_len=np.int32(n_prompt),
            max_tokens=np.int32(request.max_tokens),
            temperature=np.asarray(request.temperature, self._np_dtype),
            top_k=np.int32(request.top_k),
            top_p=np.asarray(request.top_p, self._np_dtype),
            key=_prng_key(seed),
            stops=stop_arr,
            stop_lens=stop_lens,
            row_offset=np.int32(request.row_offset),
        )
        tokens, logprobs = np.asarray(tokens), np.asarray(logprobs, np.float32)
        lengths, stopped = np.asarray(lengths), np.asarray(stopped)
        real = np.arange(logprobs.shape[1])[None, :] < lengths[:, None]
        finite = np.isfinite(logprobs[: request.num_samples][real[: request.num_samples]]).all()
        if request.include_prompt_logprobs:
            finite = finite and np.isfinite(np.asarray(prompt_lp)[: n_prompt - 1]).all()
        if not finite:
            release_compile_memory()
            raise NonFiniteResultError(
                "sample refused, a non-finite result: the sampled tokens' logprobs are not "
                "finite (the weights sampled from hold NaN or infinite values)"
            )
        sequences = [
            SampledArrays(
                tokens=tokens[i, : lengths[i]].copy(),
                logprobs=logprobs[i, : lengths[i]].copy(),
                stop_reason="stop" if stopped[i] else "length",
            )
            for i in range(request.num_samples)
        ]
        prompt_logprobs = None
        if request.include_prompt_logprobs:
            prompt_logprobs = np.full((n_prompt,), np.nan, np.float32)
            prompt_logprobs[1:] = np.asarray(prompt_lp, np.float32)[: n_prompt - 1]
        prompt_topk = None
        if request.topk_prompt_logprobs > 0:
            prompt_topk = self._prompt_topk(request, padded, n_prompt)
        release_compile_memory()
        return SampleOutput(
            sequences=sequences, prompt_logprobs=prompt_logprobs, prompt_topk=prompt_topk
        )

    def _prompt_topk(
        self, request: SampleJob, padded: np.ndarray, n_prompt: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """The prompt's top-k ids and logprobs, ``[n_prompt, k]`` (see ``SampleOutput``).

        One more prefill of the prompt (its own small program, so the sampling program is
        unchanged); ``k`` is compiled in rounded up to a power of two and cut back here."""
        k = request.topk_prompt_logprobs
        snap = request.snapshot
        ids, lps = _prompt_topk_jit(
            config=self.config,
            k=min(bucket_pow2(k), self.config.vocab_size),
            base=self._base,
            lora=None if snap is None else dict(snap.weights),
            scale=np.asarray([1.0 if snap is None else snap.scale], self._np_dtype),
            prompt=padded,
        )
        ids = np.asarray(ids)[: n_prompt - 1, :k]
        lps = np.asarray(lps, np.float32)[: n_prompt - 1, :k]
        if not np.isfinite(lps).all():
            raise NonFiniteResultError(
                "sample refused, a non-finite result: the prompt's top-k logprobs are not "
                "finite (the weights sampled from hold NaN or infinite values)"
            )
        out_ids = np.full((n_prompt, k), TOPK_EMPTY_ID, np.int32)
        out_lps = np.full((n_prompt, k), TOPK_EMPTY_LOGPROB, np.float32)
        out_ids[1:], out_lps[1:] = ids, lps
        return out_ids, out_lps

    def _check_sample(self, request: SampleJob) -> tuple[np.ndarray, int]:
        vocab, max_len = self.config.vocab_size, self.config.max_seq_len
        prompt = np.asarray(request.prompt)
        if prompt.ndim != 1 or prompt.shape[0] == 0 or prompt.dtype.kind not in "iu":
            raise ValueError(
                f"prompt: expected a non-empty 1-D int array, got {prompt.shape} {prompt.dtype}"
            )
        bad = (prompt < 0) | (prompt >= vocab)
        if bad.any():
            raise ValueError(f"prompt: token {int(prompt[bad][0])} outside [0, {vocab})")
        n_prompt = prompt.shape[0]
        if not 0 <= request.row_offset < 2**31 - request.num_samples:
            raise ValueError(f"row_offset: {request.row_offset} outside [0, 2**31)")
        if request.num_samples < 1:
            raise ValueError(f"num_samples: expected >= 1, got {request.num_samples}")
        if not 0 <= request.topk_prompt_logprobs <= vocab:
            raise ValueError(
                f"topk_prompt_logprobs: {request.topk_prompt_logprobs} outside [0, {vocab}]"
            )
        if request.max_tokens < 0 or n_prompt + request.max_tokens > max_len:
            raise ValueError(
                f"max_tokens: {request.max_tokens} with a {n_prompt}-token prompt exceeds "
                f"max_seq_len {max_len} (or is negative)"
            )
        if not (np.isfinite(request.temperature) and request.temperature >= 0):
            raise ValueError(
                f"temperature: expected a finite value >= 0, got {request.temperature}"
            )
        if not 0 < request.top_p <= 1:
            raise ValueError(f"top_p: expected a value in (0, 1], got {request.top_p}")
        for i, seq in enumerate(request.stop_token_seqs):
            arr = np.asarray(seq)
            if arr.ndim != 1 or arr.shape[0] == 0 or ((arr < 0) | (arr >= vocab)).any():
                raise ValueError(
                    f"stop_token_seqs[{i}]: expected non-empty tokens in [0, {vocab}), got {list(seq)}"
                )
        snap = request.snapshot
        if snap is not None and snap.base_model != self.base_model:
            raise ValueError(
                f"snapshot: weights of {snap.base_model!r}, runtime serves {self.base_model!r}"
            )
        return prompt.astype(np.int32), n_prompt
