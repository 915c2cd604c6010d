"""ByteTokenizer: bytes in, bytes out, specials."""

from __future__ import annotations

import pytest

from tinkjax.models import ByteTokenizer


def test_round_trip_and_specials() -> None:
    tok = ByteTokenizer()
    ids = tok.encode("héllo")
    assert ids == list("héllo".encode())
    assert tok.decode(ids) == "héllo"
    assert tok.encode("a", add_special_tokens=True) == [256, 97]
    assert tok.decode([104, 105, tok.eos_token_id]) == "hi"
    assert tok.decode([104, 105, 257], skip_special_tokens=False) == "hi<|endoftext|>"
    assert tok.decode([0xFF]) == "\ufffd"
    assert (tok.vocab_size, tok.eos_token_id, tok.bos_token_id, tok.name_or_path) == (
        260, 257, 256, "tinkjax/byte",
    )  # fmt: skip
    assert tok("ab")["input_ids"] == [97, 98]


def test_decode_rejects_out_of_range() -> None:
    with pytest.raises(ValueError, match="token 300"):
        ByteTokenizer().decode([1, 300])


def test_special_token_strings_encode_to_their_ids() -> None:
    tok = ByteTokenizer()
    text = "<|begin_of_text|>Hi<|endoftext|><|pad|>é<|reserved_0|>"
    ids = tok.encode(text)
    assert ids == [256, *b"Hi", 257, 258, *"é".encode(), 259]
    assert tok.decode(ids, skip_special_tokens=False) == text  # round trip
    assert tok.decode(ids) == "Hié"
    # as Hugging Face's split_special_tokens=True: the string is plain text
    assert tok.encode("<|pad|>", split_special_tokens=True) == list(b"<|pad|>")
    # an unfinished or unknown marker is text
    assert tok.encode("<|begin_of_text") == list(b"<|begin_of_text")
    assert tok.encode("<|other|>") == list(b"<|other|>")
    assert tok.encode("x", add_special_tokens=True) == [256, 120]
    assert tok.all_special_ids == [256, 257, 258, 259]
    assert tok.all_special_tokens[:2] == ["<|begin_of_text|>", "<|endoftext|>"]
    assert tok.convert_tokens_to_ids("<|endoftext|>") == tok.eos_token_id
    assert tok.convert_tokens_to_ids(["<|pad|>", "<|begin_of_text|>"]) == [258, 256]
