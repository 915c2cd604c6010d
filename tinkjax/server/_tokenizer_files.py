"""The byte tokenizer as a Hugging Face tokenizer folder, so the official SDK loads it offline.

The official SDK's ``TrainingClient.get_tokenizer()`` calls
``AutoTokenizer.from_pretrained(get_info().model_data.tokenizer_id)``; a hub id such as
``tinkjax/byte`` would be downloaded. The server instead writes, at start-up, a folder in the
hub's layout under its data dir (``tokenizers/tinkjax-byte/``: ``tokenizer.json``,
``tokenizer_config.json``, ``special_tokens_map.json``) and names that folder's absolute path as
the ``tokenizer_id``, which ``from_pretrained`` reads from disk.

The folder is built with the ``tokenizers`` library from :class:`tinkjax.models.ByteTokenizer`:
a byte-level BPE with no merges (token ``b`` is byte ``b``, through the byte-level alphabet),
the four special tokens at their ids (256-259), and a post-processor that prepends BOS when
``add_special_tokens`` is true (the Hugging Face default, as ``ByteTokenizer.encode(...,
add_special_tokens=True)`` does). Without ``tokenizers`` installed, or when the data dir's path
holds a ``:`` (the SDK cuts a ``tokenizer_id`` at the first ``:``), the server keeps naming
``tinkjax/byte`` (tinkjax's own client needs no folder) and logs why.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

from tinkjax.server._archive import write_atomic

__all__ = ["FOLDER", "byte_level_alphabet", "byte_tokenizer_files", "write_byte_tokenizer"]

_log = logging.getLogger(__name__)

#: Where the folder goes, under the data dir.
FOLDER = Path("tokenizers") / "tinkjax-byte"


def byte_level_alphabet() -> list[str]:
    """The byte-level alphabet in byte order: element ``b`` is the printable character that
    stands for byte ``b`` (printable Latin-1 bytes stand for themselves; the other 68 bytes take
    the characters from U+0100 on, in byte order). This is the table the ``tokenizers``
    ``ByteLevel`` pre-tokenizer and decoder use."""
    keep = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("\N{INVERTED EXCLAMATION MARK}"), ord("\N{NOT SIGN}") + 1),
        *range(ord("\N{REGISTERED SIGN}"), ord("\N{LATIN SMALL LETTER Y WITH DIAERESIS}") + 1),
    ]
    kept = set(keep)
    out: list[str] = []
    shifted = 0
    for b in range(256):
        if b in kept:
            out.append(chr(b))
        else:
            out.append(chr(256 + shifted))
            shifted += 1
    return out


def byte_tokenizer_files() -> dict[str, bytes]:
    """The files of the folder (name → bytes), built with ``tokenizers``.

    Raises:
        ImportError: ``tokenizers`` is not installed.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    from tinkjax.models import ByteTokenizer

    bt = ByteTokenizer()
    vocab = {ch: b for b, ch in enumerate(byte_level_alphabet())}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    specials = [bt.decode([i], skip_special_tokens=False) for i in bt.all_special_ids]
    # Added in id order, so each gets its ByteTokenizer id (256, 257, ...).
    added = tok.add_special_tokens(
        [AddedToken(s, special=True, normalized=False) for s in specials]
    )
    ids = [tok.token_to_id(s) for s in specials]
    if added != len(specials) or ids != list(bt.all_special_ids):
        raise RuntimeError(f"special tokens got ids {ids}, expected {bt.all_special_ids}")
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bt.bos_token} $A",
        pair=f"{bt.bos_token} $A $B:1",
        special_tokens=[(bt.bos_token, bt.bos_token_id)],
    )
    special_map = {
        "bos_token": bt.bos_token,
        "eos_token": bt.eos_token,
        "pad_token": bt.pad_token,
        "additional_special_tokens": [
            s for s in specials if s not in (bt.bos_token, bt.eos_token, bt.pad_token)
        ],
    }
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "name_or_path": bt.name_or_path,
        "model_max_length": 1 << 20,
        "clean_up_tokenization_spaces": False,
        "add_bos_token": True,
        **special_map,
    }

    def dump(obj: object) -> bytes:
        return (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()

    return {
        "tokenizer.json": tok.to_str(pretty=True).encode(),
        "tokenizer_config.json": dump(config),
        "special_tokens_map.json": dump(special_map),
    }


def write_byte_tokenizer(data_dir: Path) -> str | None:
    """Write the folder under ``data_dir`` (each file atomically, only when it changed) and
    return its absolute path; ``None`` (logged) when it cannot serve as a ``tokenizer_id``."""
    folder = (Path(data_dir) / FOLDER).resolve()
    if ":" in str(folder):
        _log.warning(
            "the data dir path %s holds ':', which the official SDK cuts tokenizer ids at; "
            "get_info names 'tinkjax/byte' (the official get_tokenizer() will need the hub)",
            folder,
        )
        return None
    if importlib.util.find_spec("tokenizers") is None:
        _log.warning(
            "the 'tokenizers' package is not installed, so the server cannot describe its byte "
            "tokenizer as a local folder; the official SDK's get_tokenizer() will need the hub "
            "(pip install 'tinkjax[hf]')"
        )
        return None
    for name, data in byte_tokenizer_files().items():
        path = folder / name
        if not path.is_file() or path.read_bytes() != data:
            write_atomic(path, data)
    return str(folder)
