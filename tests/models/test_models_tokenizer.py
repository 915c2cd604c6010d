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
