"""The byte tokenizer's Hugging Face folder: built with ``tokenizers``, read by ``transformers``
offline, and encoding/decoding exactly as :class:`tinkjax.models.ByteTokenizer`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinkjax.models import ByteTokenizer
from tinkjax.server._tokenizer_files import FOLDER, byte_level_alphabet, write_byte_tokenizer

tokenizers = pytest.importorskip("tokenizers")
transformers = pytest.importorskip("transformers")

BT = ByteTokenizer()
SPECIALS = st.sampled_from(BT.all_special_tokens)
TEXT = st.lists(st.one_of(st.text(max_size=12), SPECIALS), max_size=6).map("".join)


@pytest.fixture(scope="module")
def hf(tmp_path_factory: pytest.TempPathFactory) -> Any:
    folder = write_byte_tokenizer(tmp_path_factory.mktemp("data"))
    assert folder is not None
    return transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)


def test_alphabet_is_the_byte_level_one_in_byte_order() -> None:
    alphabet = byte_level_alphabet()
    assert len(set(alphabet)) == 256
    assert set(alphabet) == set(tokenizers.pre_tokenizers.ByteLevel.alphabet())
    pre = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    for b in range(128):  # one-byte characters: the pre-tokenizer maps them as the table says
        assert pre.pre_tokenize_str(chr(b))[0][0] == alphabet[b]


def test_folder_written_once_and_rewritten_when_changed(tmp_path: Path) -> None:
    folder = Path(str(write_byte_tokenizer(tmp_path)))
    assert folder == (tmp_path / FOLDER).resolve()
    config = folder / "tokenizer_config.json"
    before = config.stat().st_mtime_ns
    assert write_byte_tokenizer(tmp_path) == str(folder)
    assert config.stat().st_mtime_ns == before
    config.write_text("{}")
    write_byte_tokenizer(tmp_path)
    assert config.read_text() != "{}"
    assert write_byte_tokenizer(tmp_path / "a:b") is None  # the SDK would cut the id at ':'


@settings(max_examples=150, deadline=None)
@given(text=TEXT)
def test_encode_matches_byte_tokenizer(hf: Any, text: str) -> None:
    assert hf.encode(text, add_special_tokens=False) == BT.encode(text)
    assert hf.encode(text) == BT.encode(text, add_special_tokens=True)


@settings(max_examples=150, deadline=None)
@given(ids=st.lists(st.integers(0, BT.vocab_size - 1), max_size=40))
def test_decode_matches_byte_tokenizer(hf: Any, ids: list[int]) -> None:
    for skip in (True, False):
        assert hf.decode(ids, skip_special_tokens=skip) == BT.decode(ids, skip_special_tokens=skip)


def test_special_token_attributes(hf: Any) -> None:
    assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id) == (
        BT.bos_token_id, BT.eos_token_id, BT.pad_token_id,
    )  # fmt: skip
    assert sorted(hf.all_special_ids) == BT.all_special_ids
    assert len(hf) == BT.vocab_size
