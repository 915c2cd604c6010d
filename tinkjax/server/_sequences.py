"""Recorded sampled sequences (``record_stability_info=True``) and the provenance that names them.

A sampling client created with ``record_stability_info=True`` has every sequence it samples
recorded here under its ``sequence_id``: the request's prompt, the sampled tokens, and the
sampler's own logprob of each sampled token (the "stability info"). A ``stable_reinforce``
training request names those sequences through each datum's provenance spans; the server checks
every span against the record (the tokens must be the recorded ones) and fills the loss's
sampler logprobs and sampled-token mask from it (:meth:`SequenceRecords.fill`).

Lifetime, as the Tinker documentation states it: a recorded sequence belongs to the session that
sampled it (a request from another session, and so from another tenant, cannot see it) and can
be trained on for one day (:data:`SEQUENCE_TTL_S`) after it was sampled; each training request
that uses it restarts that day. Memory is bounded: at most :data:`MAX_SESSION_TOKENS` tokens per
session and :data:`MAX_TOTAL_TOKENS` in all (a sequence counts its prompt plus its sampled
tokens); past either, the least recently used sequences are evicted. Ending a session drops its
sequences. A forgotten id (expired, evicted, session ended) is remembered, boundedly, so the 400
that names it can say why.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from tinkjax.server._errors import ApiError
from tinkjax.types import Datum, PromptProvenanceSpan, SampledProvenanceSpan, TensorData

__all__ = [
    "MAX_FORGOTTEN_IDS",
    "MAX_SESSION_TOKENS",
    "MAX_TOTAL_TOKENS",
    "SEQUENCE_TTL_S",
    "SequenceRecord",
    "SequenceRecords",
    "session_of_sampler",
]

#: How long a recorded sequence can be trained on after its last use (sampling or training).
SEQUENCE_TTL_S = 86400.0
#: Most tokens (prompt + sampled, per sequence) one session's records may hold.
MAX_SESSION_TOKENS = 4_000_000
#: Most tokens all sessions' records may hold (about 8 bytes a token).
MAX_TOTAL_TOKENS = 8_000_000
#: Forgotten ids remembered for the error message (oldest dropped first).
MAX_FORGOTTEN_IDS = 65_536


def session_of_sampler(sampler_id: str) -> str | None:
    """The session a sampling session id (``{session}:sample:{n}``) belongs to, if any."""
    session, sep, _ = sampler_id.partition(":sample:")
    return session if sep and session else None


@dataclass
class SequenceRecord:
    """One recorded sequence: ``prompt`` [P] int32 (shared by the request's samples),
    ``tokens`` [n] int32 sampled, ``logprobs`` [n] float32 the sampler's logprob of each."""

    prompt: npt.NDArray[np.int32]
    tokens: npt.NDArray[np.int32]
    logprobs: npt.NDArray[np.float32]
    last_used: float

    @property
    def size(self) -> int:
        return int(self.prompt.shape[0] + self.tokens.shape[0])


def _frozen(arr: npt.ArrayLike, dtype: type) -> npt.NDArray[np.generic]:
    out: npt.NDArray[np.generic] = np.array(arr, dtype=dtype)
    out.flags.writeable = False
    return out


class SequenceRecords:
    """The recorded sequences of every session (thread-safe).

    Args:
        ttl_s: lifetime after the last use.
        max_session_tokens, max_total_tokens: the memory bounds (see the module docstring).
        clock: monotonic seconds (tests pass a fake one).
    """

    def __init__(
        self,
        *,
        ttl_s: float = SEQUENCE_TTL_S,
        max_session_tokens: int = MAX_SESSION_TOKENS,
        max_total_tokens: int = MAX_TOTAL_TOKENS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl_s <= 0 or max_session_tokens < 1 or max_total_tokens < 1:
            raise ValueError("SequenceRecords: ttl_s and the token bounds must be positive")
        self.ttl_s = ttl_s
        self.max_session_tokens = max_session_tokens
        self.max_total_tokens = max_total_tokens
        self._clock = clock
        self._lock = threading.Lock()
        # (session, sequence id) -> record, least recently used first
        self._lru: collections.OrderedDict[tuple[str, str], SequenceRecord] = (
            collections.OrderedDict()
        )
        self._session_tokens: dict[str, int] = collections.defaultdict(int)
        self._total = 0
        self._forgotten: collections.OrderedDict[tuple[str, str], str] = collections.OrderedDict()

    # ------------------------------------------------------------------ bookkeeping

    def __len__(self) -> int:
        with self._lock:
            return len(self._lru)

    def tokens_held(self, session_id: str | None = None) -> int:
        """Tokens held in all (or by one session)."""
        with self._lock:
            return self._total if session_id is None else self._session_tokens.get(session_id, 0)

    def _drop(self, key: tuple[str, str], why: str) -> None:
        rec = self._lru.pop(key)
        self._total -= rec.size
        left = self._session_tokens[key[0]] - rec.size
        if left:
            self._session_tokens[key[0]] = left
        else:
            del self._session_tokens[key[0]]
        self._forgotten[key] = why
        while len(self._forgotten) > MAX_FORGOTTEN_IDS:
            self._forgotten.popitem(last=False)

    def _expire(self, now: float) -> None:
        while self._lru:
            key, rec = next(iter(self._lru.items()))
            if now - rec.last_used <= self.ttl_s:
                break
            self._drop(key, "expired")

    def _evict_for(self, session_id: str, size: int) -> None:
        while self._lru and self._total + size > self.max_total_tokens:
            self._drop(next(iter(self._lru)), "evicted")
        if self._session_tokens.get(session_id, 0) + size > self.max_session_tokens:
            for key in [k for k in self._lru if k[0] == session_id]:
                if self._session_tokens.get(session_id, 0) + size <= self.max_session_tokens:
                    break
                self._drop(key, "evicted")

    # ------------------------------------------------------------------ recording

    def record(
        self,
        session_id: str,
        prompt: npt.ArrayLike,
        sequences: Sequence[tuple[str, npt.ArrayLike, npt.ArrayLike]],
    ) -> None:
        """Record ``(sequence_id, tokens, logprobs)`` sampled from ``prompt`` in the session."""
        shared = _frozen(prompt, np.int32)
        now = self._clock()
        with self._lock:
            self._expire(now)
            for seq_id, tokens, logprobs in sequences:
                rec = SequenceRecord(
                    prompt=shared,  # type: ignore[arg-type]
                    tokens=_frozen(tokens, np.int32),  # type: ignore[arg-type]
                    logprobs=_frozen(logprobs, np.float32),  # type: ignore[arg-type]
                    last_used=now,
                )
                if rec.tokens.shape != rec.logprobs.shape:
                    raise ValueError(f"record: {seq_id!r} has tokens and logprobs of two lengths")
                key = (session_id, seq_id)
                if key in self._lru:
                    self._drop(key, "replaced")
                if rec.size > min(self.max_session_tokens, self.max_total_tokens):
                    self._forgotten[key] = "too_long"
                    continue
                self._evict_for(session_id, rec.size)
                self._lru[key] = rec
                self._session_tokens[session_id] += rec.size
                self._total += rec.size
                self._forgotten.pop(key, None)

    def forget_session(self, session_id: str) -> int:
        """Drop an ended session's records; returns how many."""
        with self._lock:
            keys = [k for k in self._lru if k[0] == session_id]
            for key in keys:
                self._drop(key, "session_ended")
            return len(keys)

    # ------------------------------------------------------------------ lookups

    def _unknown(self, key: tuple[str, str], field: str) -> ApiError:
        seq_id = key[1]
        why = self._forgotten.get(key)
        if why == "expired":
            detail = (
                f"expired: recorded sequences can be trained on for {self.ttl_s:g} s (one day) "
                "after they were sampled or last used in training"
            )
        elif why == "evicted":
            detail = (
                "was evicted to keep the recorded sequences within their memory bound "
                f"({self.max_session_tokens} tokens a session, {self.max_total_tokens} in all; "
                "least recently used first)"
            )
        elif why == "too_long":
            detail = "was not recorded: the sequence is longer than the recording bound"
        elif why == "session_ended":
            detail = "belonged to a session that has ended"
        else:
            detail = (
                "is unknown in this session: sequence ids name sequences sampled in the same "
                "session by a sampling client created with record_stability_info=True"
            )
        return ApiError(400, f"{field}: sequence_id {seq_id!r} {detail}", field=field)

    def get(self, session_id: str, seq_id: str, field: str) -> SequenceRecord:
        """The live record of ``seq_id`` in the session; 400 naming ``field`` otherwise."""
        now = self._clock()
        with self._lock:
            self._expire(now)
            key = (session_id, seq_id)
            rec = self._lru.get(key)
            if rec is None:
                raise self._unknown(key, field)
            return rec

    def touch(self, session_id: str, seq_ids: Sequence[str]) -> None:
        """Restart the lifetime of sequences a training request used."""
        now = self._clock()
        with self._lock:
            for seq_id in seq_ids:
                key = (session_id, seq_id)
                rec = self._lru.get(key)
                if rec is not None:
                    rec.last_used = now
                    self._lru.move_to_end(key)

    # ------------------------------------------------------------------ provenance

    def fill(
        self, session_id: str | None, data: Sequence[Datum], server_filled: Sequence[str]
    ) -> list[Datum]:
        """The datums with the loss inputs ``server_filled`` (``logprobs``, ``sampled_mask``)
        computed from their provenance spans and the records they name.

        Every datum must carry both span lists, tiling ``model_input`` and ``target_tokens``
        (1-D) exactly; every span must name a live sequence of ``session_id`` and lie within
        its recorded prompt (``PromptProvenanceSpan``) or sampled tokens
        (``SampledProvenanceSpan``), and the datum's tokens there must be the recorded ones
        (for the targets, on the sampled spans).
        ``logprobs`` becomes the sampler's recorded logprob on sampled-span targets (0
        elsewhere) and ``sampled_mask`` is 1 exactly there. Sequences used have their
        lifetime restarted once every datum passed.

        Raises:
            ApiError: 400 naming the datum, the span list, the span and the problem.
        """
        if session_id is None:
            raise ApiError(
                400, "model_id: the model has no session, and recorded sequences belong to one",
                field="model_id",
            )  # fmt: skip
        used: set[str] = set()
        out = []
        for i, datum in enumerate(data):
            where = f"data[{i}]"
            if datum.model_input_spans is None or datum.loss_fn_input_spans is None:
                field = f"{where}.loss_fn_input_spans"
                raise ApiError(
                    400,
                    f"{field}: this loss needs provenance on every datum (Datum.with_provenance "
                    "naming the sampled sequences behind its tokens)",
                    field=field,
                )
            try:
                tokens = np.asarray(datum.model_input.to_numpy(), np.int64)
            except ValueError as exc:
                raise ApiError(400, f"{where}.model_input: {exc}", field="model_input") from None
            target_td = datum.loss_fn_inputs.get("target_tokens")
            if target_td is None:
                field = f"{where}.loss_fn_inputs"
                raise ApiError(400, f"{field}: target_tokens is required", field=field)
            try:
                targets = np.asarray(target_td.to_numpy())
            except ValueError as exc:
                field = f"{where}.loss_fn_inputs['target_tokens']"
                raise ApiError(400, f"{field}: {exc}", field=field) from None
            if targets.ndim != 1:
                field = f"{where}.loss_fn_inputs['target_tokens']"
                raise ApiError(
                    400, f"{field}: this loss takes 1-D targets, got shape {targets.shape}",
                    field=field,
                )  # fmt: skip
            self._check(
                f"{where}.model_input_spans", datum.model_input_spans, tokens, session_id,
                targets=False,
            )  # fmt: skip
            q, mask = self._check(
                f"{where}.loss_fn_input_spans", datum.loss_fn_input_spans, targets, session_id,
                targets=True,
            )  # fmt: skip
            used.update(span.sequence_id for span in datum.model_input_spans)
            used.update(span.sequence_id for span in datum.loss_fn_input_spans)
            filled = {
                "logprobs": TensorData.from_numpy(q),
                "sampled_mask": TensorData.from_numpy(mask),
            }
            inputs = dict(datum.loss_fn_inputs)
            inputs.update({k: filled[k] for k in server_filled})
            out.append(
                Datum(
                    model_input=datum.model_input,
                    loss_fn_inputs=inputs,
                    model_input_spans=datum.model_input_spans,
                    loss_fn_input_spans=datum.loss_fn_input_spans,
                )
            )
        self.touch(session_id, sorted(used))
        return out

    def _check(
        self,
        field: str,
        spans: Sequence[object],
        values: np.ndarray,
        session_id: str,
        *,
        targets: bool,
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """Check ``spans`` tile ``values`` and match the records; the recorded logprobs and
        the sampled mask over ``values``' positions.

        Tokens are compared with the record everywhere in ``model_input`` and on the sampled
        spans of the targets; prompt spans of the targets are checked for bounds only (the
        loss gives them no weight, and clients pad those targets, as the cookbook does)."""
        n = int(values.shape[0])
        q = np.zeros((n,), np.float32)
        mask = np.zeros((n,), np.float32)
        pos = 0
        for j, span in enumerate(spans):
            sfield = f"{field}[{j}]"
            if not isinstance(span, PromptProvenanceSpan | SampledProvenanceSpan):
                raise ApiError(400, f"{sfield}: not a provenance span: {span!r}", field=sfield)
            offset, length = span.offset, span.length
            for name, value in (("offset", offset), ("length", length)):
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise ApiError(
                        400, f"{sfield}.{name}: expected an integer >= 0, got {value!r}",
                        field=f"{sfield}.{name}",
                    )  # fmt: skip
            if not isinstance(span.sequence_id, str) or not span.sequence_id:
                raise ApiError(
                    400, f"{sfield}.sequence_id: expected a non-empty string",
                    field=f"{sfield}.sequence_id",
                )  # fmt: skip
            if pos + length > n:
                raise ApiError(
                    400,
                    f"{field}: the spans cover more than the field's {n} positions (span {j} "
                    f"ends at {pos + length}); they must tile it exactly",
                    field=field,
                )
            rec = self.get(session_id, span.sequence_id, f"{sfield}.sequence_id")
            sampled = isinstance(span, SampledProvenanceSpan)
            source = rec.tokens if sampled else rec.prompt
            kind = "sampled tokens" if sampled else "prompt"
            if offset + length > source.shape[0]:
                raise ApiError(
                    400,
                    f"{sfield}: [{offset}, {offset + length}) lies beyond the recorded {kind} "
                    f"of {span.sequence_id!r} ({source.shape[0]} tokens)",
                    field=sfield,
                )
            got = values[pos : pos + length]
            want = source[offset : offset + length]
            bad = np.flatnonzero(got != want) if sampled or not targets else np.empty(0)
            if bad.size:
                k = int(bad[0])
                raise ApiError(
                    400,
                    f"{sfield}: token {int(got[k])} at position {pos + k} is not the recorded "
                    f"{kind} token {int(want[k])} of {span.sequence_id!r} (index {offset + k})",
                    field=sfield,
                )
            if sampled:
                q[pos : pos + length] = rec.logprobs[offset : offset + length]
                mask[pos : pos + length] = 1.0
            pos += length
        if pos != n:
            raise ApiError(
                400,
                f"{field}: the spans cover {pos} positions but the field has {n}; they must "
                "tile it exactly",
                field=field,
            )
        return q, mask
