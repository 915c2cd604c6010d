"""Sampling requests and results."""

from __future__ import annotations

from typing import Any, Literal

import msgspec
import numpy as np
import numpy.typing as npt

from tinkjax.errors import TensorError, WireFormatError

from ._base import StrictWire, Wire
from ._model_input import ModelInput
from ._tensor import TensorData

__all__ = [
    "CreateSamplingSessionRequest",
    "CreateSamplingSessionResponse",
    "GetSamplerResponse",
    "PromptAltTokens",
    "SampleRequest",
    "SampleResponse",
    "SampledSequence",
    "SamplingParams",
    "StopReason",
    "TopkLogprobs",
]

StopReason = Literal["length", "stop"]

#: The logprob of an empty top-k cell (with token id 0).
TOPK_EMPTY_LOGPROB = -99999.0


def _frozen_array(value: Any, dtype: Any, field: str, ndim: int = 1) -> npt.NDArray[Any]:
    try:
        arr = np.asarray(value if value is not None else (), dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise TensorError(str(exc), field=field) from None
    if arr.ndim != ndim:
        raise TensorError(f"expected {ndim}-D values, got shape {arr.shape}", field=field)
    if arr.flags.writeable:
        arr = arr.copy() if arr is value else arr
        arr.flags.writeable = False
    return arr


def _same(a: npt.NDArray[Any] | None, b: npt.NDArray[Any] | None) -> bool:
    if a is None or b is None:
        return a is b
    return a.shape == b.shape and bool(np.array_equal(a, b, equal_nan=a.dtype.kind == "f"))


class SamplingParams(Wire, frozen=True, kw_only=True):
    """How to sample: ``stop=None`` keeps the end-of-text stop, ``stop=[]`` disables all stops."""

    max_tokens: int | None = None
    seed: int | None = None
    # ``list[str] | list[int]`` is not a union msgspec can decode; the element type is checked
    # in ``__post_init__`` instead, so a list is all strings or all token ids.
    stop: str | list[str | int] | None = None
    temperature: float = 1.0
    top_k: int = -1
    top_p: float = 1.0

    def __post_init__(self) -> None:
        stop = self.stop
        if not isinstance(stop, list) or not stop:
            return
        if not (
            all(isinstance(x, str) for x in stop)
            or all(isinstance(x, int) and not isinstance(x, bool) for x in stop)
        ):
            raise WireFormatError(
                f"stop must be a string, a list of strings or a list of token ids, got {stop!r}",
                field="stop",
            )


class SampleRequest(StrictWire, frozen=True, kw_only=True):
    """``/asample``: sample ``num_samples`` continuations of ``prompt``."""

    prompt: ModelInput
    sampling_params: SamplingParams
    num_samples: int = 1
    base_model: str | None = None
    model_path: str | None = None
    sampling_session_id: str | None = None
    seq_id: int | None = None
    prompt_logprobs: bool | None = None
    topk_prompt_logprobs: int = 0
    topk_sample_logprobs: int = 0
    target_prompt_logprobs: TensorData | None = None
    prompt_alt_tokens_k: int = 0
    prompt_logprobs_last_n: int | None = None
    record_stability_info: bool | None = None
    type: Literal["sample"] = "sample"


class TopkLogprobs(Wire, frozen=True, kw_only=True, eq=False):
    """Row-major ``[length, k]`` top-k token ids (int32) and logprobs (float32)."""

    token_ids: Any
    logprobs: Any
    k: int
    length: int

    def __post_init__(self) -> None:
        ids = _frozen_array(self.token_ids, np.int32, "token_ids", ndim=np.ndim(self.token_ids))
        lps = _frozen_array(self.logprobs, np.float32, "logprobs", ndim=np.ndim(self.logprobs))
        try:
            ids = ids.reshape(self.length, self.k)
            lps = lps.reshape(self.length, self.k)
        except ValueError:
            raise TensorError(
                f"{ids.size} ids / {lps.size} logprobs do not fill [{self.length}, {self.k}]",
                field="token_ids",
            ) from None
        msgspec.structs.force_setattr(self, "token_ids", ids)
        msgspec.structs.force_setattr(self, "logprobs", lps)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TopkLogprobs):
            return NotImplemented
        return (
            (self.k, self.length) == (other.k, other.length)
            and _same(self.token_ids, other.token_ids)
            and _same(self.logprobs, other.logprobs)
        )

    __hash__ = None  # type: ignore[assignment]

    def to_lists(self) -> list[list[tuple[int, float]] | None]:
        """Per position, up to ``k`` ``(token_id, logprob)`` pairs, or ``None`` where nothing
        was computed: trailing empty cells (id 0, logprob ``TOPK_EMPTY_LOGPROB``) are
        dropped and a row starting with one is ``None`` (the official SDK's reading)."""
        out: list[list[tuple[int, float]] | None] = []
        for ids, lps in zip(self.token_ids.tolist(), self.logprobs.tolist(), strict=True):
            n = len(ids)
            while n and ids[n - 1] == 0 and lps[n - 1] == TOPK_EMPTY_LOGPROB:
                n -= 1
            if not ids or (ids[0] == 0 and lps[0] == TOPK_EMPTY_LOGPROB):
                out.append(None)
            else:
                out.append(list(zip(ids[:n], lps[:n], strict=True)))
        return out


class PromptAltTokens(Wire, frozen=True, kw_only=True):
    """``[len(prompt) - 1, k]`` alternative tokens and their logprobs."""

    tokens: TensorData
    logprobs: TensorData


class SampledSequence(Wire, frozen=True, kw_only=True, eq=False):
    """One generated sequence.

    Attributes:
        stop_reason: ``"stop"`` (a stop sequence or end-of-text) or ``"length"``.
        tokens_np: [n] int32 generated token ids (``tokens`` on the wire).
        logprobs_np: [n] float32 logprob of each generated token (``logprobs`` on the wire).
        sequence_id: the session-scoped id of this sequence.
    """

    stop_reason: StopReason
    tokens_np: Any = msgspec.field(name="tokens")
    logprobs_np: Any = msgspec.field(default=None, name="logprobs")
    sequence_id: str | None = None
    topk_logprobs_np: TopkLogprobs | None = msgspec.field(default=None, name="topk_logprobs")

    def __post_init__(self) -> None:
        msgspec.structs.force_setattr(
            self, "tokens_np", _frozen_array(self.tokens_np, np.int32, "tokens")
        )
        if self.logprobs_np is not None:
            lp = _frozen_array(self.logprobs_np, np.float32, "logprobs")
            if lp.shape != self.tokens_np.shape:
                raise TensorError(
                    f"{lp.size} logprobs for {self.tokens_np.size} tokens", field="logprobs"
                )
            msgspec.structs.force_setattr(self, "logprobs_np", lp)

    @property
    def tokens(self) -> list[int]:
        """Generated token ids as a Python list."""
        return [int(t) for t in self.tokens_np]

    @property
    def logprobs(self) -> list[float] | None:
        """Logprobs of the generated tokens as a Python list."""
        return None if self.logprobs_np is None else [float(x) for x in self.logprobs_np]

    @property
    def topk_logprobs(self) -> list[list[tuple[int, float]] | None] | None:
        """Top-k ``(token_id, logprob)`` pairs at each generated position (``None`` when not
        requested)."""
        return None if self.topk_logprobs_np is None else self.topk_logprobs_np.to_lists()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SampledSequence):
            return NotImplemented
        return (
            self.stop_reason == other.stop_reason
            and self.sequence_id == other.sequence_id
            and _same(self.tokens_np, other.tokens_np)
            and _same(self.logprobs_np, other.logprobs_np)
            and self.topk_logprobs_np == other.topk_logprobs_np
        )

    __hash__ = None  # type: ignore[assignment]


class SampleResponse(Wire, frozen=True, kw_only=True, eq=False):
    """The sequences of one sample request, and prompt logprobs when asked for.

    Attributes:
        prompt_logprobs_np: [len(prompt)] float32, NaN where not computed (``prompt_logprobs``
            on the wire, where NaN travels as ``null``).
    """

    sequences: list[SampledSequence]
    prompt_logprobs_np: Any = msgspec.field(default=None, name="prompt_logprobs")
    topk_prompt_logprobs_np: TopkLogprobs | None = msgspec.field(
        default=None, name="topk_prompt_logprobs"
    )
    target_prompt_logprobs: TensorData | None = None
    prompt_cache_hit_tokens: int = 0
    prompt_alt_tokens: PromptAltTokens | None = None
    type: Literal["sample"] = "sample"
    __wire_nan_as_null__ = ("prompt_logprobs_np",)

    def __post_init__(self) -> None:
        if self.prompt_logprobs_np is not None:
            raw = self.prompt_logprobs_np
            if isinstance(raw, list):
                raw = [np.nan if x is None else x for x in raw]
            msgspec.structs.force_setattr(
                self, "prompt_logprobs_np", _frozen_array(raw, np.float32, "prompt_logprobs")
            )

    @property
    def prompt_logprobs(self) -> list[float | None] | None:
        """Prompt logprobs as a list with ``None`` where not computed."""
        if self.prompt_logprobs_np is None:
            return None
        return [None if np.isnan(x) else float(x) for x in self.prompt_logprobs_np]

    @property
    def topk_prompt_logprobs(self) -> list[list[tuple[int, float]] | None] | None:
        """Per prompt position, the ``topk_prompt_logprobs`` most likely ``(token_id,
        logprob)`` pairs, or ``None`` where not computed (position 0, and before
        ``prompt_logprobs_last_n``); ``None`` when not requested."""
        if self.topk_prompt_logprobs_np is None:
            return None
        return self.topk_prompt_logprobs_np.to_lists()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SampleResponse):
            return NotImplemented
        return (
            self.sequences == other.sequences
            and _same(self.prompt_logprobs_np, other.prompt_logprobs_np)
            and self.topk_prompt_logprobs_np == other.topk_prompt_logprobs_np
            and self.target_prompt_logprobs == other.target_prompt_logprobs
            and self.prompt_cache_hit_tokens == other.prompt_cache_hit_tokens
            and self.prompt_alt_tokens == other.prompt_alt_tokens
        )

    __hash__ = None  # type: ignore[assignment]


class CreateSamplingSessionRequest(StrictWire, frozen=True, kw_only=True):
    session_id: str
    sampling_session_seq_id: int
    base_model: str | None = None
    model_path: str | None = None
    type: Literal["create_sampling_session"] = "create_sampling_session"


class CreateSamplingSessionResponse(Wire, frozen=True, kw_only=True):
    sampling_session_id: str
    type: Literal["create_sampling_session"] = "create_sampling_session"


class GetSamplerResponse(Wire, frozen=True, kw_only=True):
    sampler_id: str
    base_model: str
    model_path: str | None = None
