"""A byte-level tokenizer: token ``b`` is byte ``b``; four special tokens follow."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import ClassVar

__all__ = ["BOS_TOKEN_ID", "EOS_TOKEN_ID", "PAD_TOKEN_ID", "ByteTokenizer"]

BOS_TOKEN_ID = 256
EOS_TOKEN_ID = 257
PAD_TOKEN_ID = 258
_RESERVED_TOKEN_ID = 259
_SPECIALS = {
    BOS_TOKEN_ID: "<|begin_of_text|>",
    EOS_TOKEN_ID: "<|endoftext|>",
    PAD_TOKEN_ID: "<|pad|>",
    _RESERVED_TOKEN_ID: "<|reserved_0|>",
}
_SPECIAL_IDS = {text: tok for tok, text in _SPECIALS.items()}
#: Special-token strings in a text, longest first (none is a prefix of another today).
_SPECIAL_RE = re.compile(
    "|".join(re.escape(t) for t in sorted(_SPECIAL_IDS, key=len, reverse=True))
)


class ByteTokenizer:
    """UTF-8 bytes as tokens, with the small Hugging Face-like surface cookbook code uses.

    ``encode`` reads a special token's string in the text as that token (as Hugging Face
    tokenizers do, unless ``split_special_tokens``) and prepends BOS if ``add_special_tokens``;
    ``decode`` drops specials by default (the bytes on either side then decode together, as a
    Hugging Face tokenizer's do) and writes them by name otherwise.
    """

    name_or_path = "tinkjax/byte"
    vocab_size = 260
    bos_token_id = BOS_TOKEN_ID
    eos_token_id = EOS_TOKEN_ID
    pad_token_id = PAD_TOKEN_ID
    bos_token = _SPECIALS[BOS_TOKEN_ID]
    eos_token = _SPECIALS[EOS_TOKEN_ID]
    pad_token = _SPECIALS[PAD_TOKEN_ID]
    all_special_ids: ClassVar[list[int]] = sorted(_SPECIALS)
    all_special_tokens: ClassVar[list[str]] = [_SPECIALS[t] for t in sorted(_SPECIALS)]

    def encode(
        self, text: str, add_special_tokens: bool = False, split_special_tokens: bool = False
    ) -> list[int]:
        """Token ids of ``text``: its UTF-8 bytes, with each special token's string (e.g.
        ``<|begin_of_text|>``) as that token's id unless ``split_special_tokens``;
        BOS-prefixed if ``add_special_tokens``."""
        ids: list[int] = [BOS_TOKEN_ID] if add_special_tokens else []
        if split_special_tokens:
            return [*ids, *text.encode("utf-8")]
        pos = 0
        for match in _SPECIAL_RE.finditer(text):
            ids.extend(text[pos : match.start()].encode("utf-8"))
            ids.append(_SPECIAL_IDS[match.group()])
            pos = match.end()
        ids.extend(text[pos:].encode("utf-8"))
        return ids

    def convert_tokens_to_ids(self, tokens: str | list[str]) -> int | list[int]:
        """A special token's id by its string (a list of them: their ids).

        Raises:
            KeyError: not a special token's string (byte tokens have no string form).
        """
        if isinstance(tokens, str):
            return _SPECIAL_IDS[tokens]
        return [_SPECIAL_IDS[t] for t in tokens]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """Text of ``ids``; invalid UTF-8 becomes U+FFFD.

        Raises:
            ValueError: an id outside ``[0, vocab_size)``.
        """
        out: list[str] = []
        buf = bytearray()
        for raw in ids:
            tok = int(raw)
            if 0 <= tok < 256:
                buf.append(tok)
                continue
            if tok not in _SPECIALS:
                raise ValueError(f"ids: token {tok} outside [0, {self.vocab_size})")
            if skip_special_tokens:  # dropped: the bytes around it join (as Hugging Face's)
                continue
            out.append(buf.decode("utf-8", errors="replace"))
            buf.clear()
            out.append(_SPECIALS[tok])
        out.append(buf.decode("utf-8", errors="replace"))
        return "".join(out)

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        """``{"input_ids": encode(text)}``, as a Hugging Face tokenizer call returns."""
        return {"input_ids": self.encode(text, add_special_tokens=add_special_tokens)}

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return f"ByteTokenizer(name_or_path={self.name_or_path!r}, vocab_size={self.vocab_size})"
