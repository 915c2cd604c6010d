"""``ModelInput``: the tokens (and other chunks) a model reads.

JSON chunks are tagged by ``type``: ``encoded_text``, ``image``, ``image_asset_pointer``, ``dmel``.
Token chunks keep their tokens in an int64 NumPy array so the protobuf codec writes them without
a Python loop.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Literal

import msgspec
import numpy as np
import numpy.typing as npt

from tinkjax.errors import TensorError

from ._base import StrictWire

__all__ = [
    "DmelChunk",
    "EncodedTextChunk",
    "ImageAssetPointerChunk",
    "ImageChunk",
    "ModelInput",
    "ModelInputChunk",
]


class EncodedTextChunk(
    StrictWire, frozen=True, kw_only=True, tag="encoded_text", tag_field="type", eq=False
):
    """A run of token ids.

    Attributes:
        tokens: [n] token ids, stored as a read-only int64 NumPy array.
    """

    tokens: Any

    def __post_init__(self) -> None:
        raw = self.tokens
        try:
            src = np.asarray(raw if raw is not None else (), dtype=None)
            if src.size == 0:
                src = src.astype(np.int64)
            if src.dtype.kind not in "iu" or src.ndim != 1:
                raise TypeError(
                    f"expected a 1-D sequence of integers, got dtype {src.dtype} "
                    f"and shape {src.shape}"
                )
        except (TypeError, ValueError) as exc:
            raise TensorError(str(exc), field="tokens") from None
        arr = src.astype(np.int64, copy=False)
        if arr.flags.writeable:
            arr = arr.copy() if arr is raw else arr
            arr.flags.writeable = False
        msgspec.structs.force_setattr(self, "tokens", arr)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, EncodedTextChunk):
            return NotImplemented
        return bool(np.array_equal(self.tokens, other.tokens))

    __hash__ = None  # type: ignore[assignment]

    @property
    def type(self) -> str:
        return "encoded_text"

    @property
    def length(self) -> int:
        return int(self.tokens.size)


class ImageChunk(StrictWire, frozen=True, kw_only=True, tag="image", tag_field="type"):
    """An inline image; ``data`` travels base64-encoded in JSON."""

    data: bytes
    format: Literal["png", "jpeg"]
    expected_tokens: int | None = None

    @property
    def type(self) -> str:
        return "image"

    @property
    def length(self) -> int:
        if self.expected_tokens is None:
            raise ValueError("ImageChunk.expected_tokens must be set to compute the length")
        return self.expected_tokens


class ImageAssetPointerChunk(
    StrictWire, frozen=True, kw_only=True, tag="image_asset_pointer", tag_field="type"
):
    """An image referenced by location (cannot be sent as protobuf)."""

    format: Literal["png", "jpeg"]
    location: str
    expected_tokens: int | None = None

    @property
    def type(self) -> str:
        return "image_asset_pointer"

    @property
    def length(self) -> int:
        if self.expected_tokens is None:
            raise ValueError(
                "ImageAssetPointerChunk.expected_tokens must be set to compute the length"
            )
        return self.expected_tokens


class DmelChunk(StrictWire, frozen=True, kw_only=True, tag="dmel", tag_field="type"):
    """A serialized DMel token tensor (opaque to tinkjax)."""

    dmel: bytes

    @property
    def type(self) -> str:
        return "dmel"

    @property
    def length(self) -> int:
        raise ValueError("the length of a DmelChunk is not known client-side")


ModelInputChunk = EncodedTextChunk | ImageChunk | ImageAssetPointerChunk | DmelChunk


class ModelInput(StrictWire, frozen=True, kw_only=True):
    """A model input: a list of chunks."""

    chunks: list[ModelInputChunk] = msgspec.field(default_factory=list)

    @classmethod
    def from_ints(cls, tokens: Iterable[int] | npt.ArrayLike) -> ModelInput:
        """One text chunk holding ``tokens``."""
        arr = np.asarray(tokens if isinstance(tokens, np.ndarray | Sequence) else list(tokens))  # type: ignore[arg-type]
        return cls(chunks=[EncodedTextChunk(tokens=arr)])

    @classmethod
    def empty(cls) -> ModelInput:
        """An input with no chunks."""
        return cls(chunks=[])

    def to_ints(self) -> list[int]:
        """All token ids, when every chunk is text."""
        return [int(t) for t in self.to_numpy()]

    def to_numpy(self) -> npt.NDArray[np.int64]:
        """All token ids as one int64 array, when every chunk is text."""
        parts = []
        for i, chunk in enumerate(self.chunks):
            if not isinstance(chunk, EncodedTextChunk):
                raise ValueError(
                    f"chunks[{i}] is a {type(chunk).__name__}; only text chunks have token ids"
                )
            parts.append(chunk.tokens)
        if not parts:
            return np.zeros(0, dtype=np.int64)
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    @property
    def length(self) -> int:
        """Number of positions (text tokens plus each image's expected tokens)."""
        return sum(chunk.length for chunk in self.chunks)

    def append(self, chunk: ModelInputChunk) -> ModelInput:
        """A new input with ``chunk`` added at the end."""
        return ModelInput(chunks=[*self.chunks, chunk])

    def append_int(self, token: int) -> ModelInput:
        """A new input with one more token (merged into a trailing text chunk)."""
        if self.chunks and isinstance(self.chunks[-1], EncodedTextChunk):
            last = self.chunks[-1]
            merged = EncodedTextChunk(tokens=np.append(last.tokens, np.int64(token)))
            return ModelInput(chunks=[*self.chunks[:-1], merged])
        return self.append(EncodedTextChunk(tokens=[token]))
