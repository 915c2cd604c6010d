"""A byte-level tokenizer: token ``b`` is byte ``b``; four special tokens follow."""

from __future__ import annotations

from collections.abc import Iterable

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


class ByteTokenizer:
    """UTF-8 bytes as tokens, with the small Hugging Face-like surface cookbook code uses.

    ``encode`` never emits specials unless ``add_special_tokens`` (then BOS is prepended);
    ``decode`` drops specials by default and writes them by name otherwise.
    """

    name_or_path = "tinkjax/byte"
    vocab_size = 260
    bos_token_id = BOS_TOKEN_ID
    eos_token_id = EOS_TOKEN_ID
    pad_token_id = PAD_TOKEN_ID
    bos_token = _SPECIALS[BOS_TOKEN_ID]
    eos_token = _SPECIALS[EOS_TOKEN_ID]
    pad_token = _SPECIALS[PAD_TOKEN_ID]

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of ``text`` (its UTF-8 bytes), BOS-prefixed if ``add_special_tokens``."""
        ids = list(text.encode("utf-8"))
        return [BOS_TOKEN_ID, *ids] if add_special_tokens else ids

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
            out.append(buf.decode("utf-8", errors="replace"))
            buf.clear()
            if not skip_special_tokens:
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
