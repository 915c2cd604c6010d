"""Tokenizers for a model name: the byte tokenizer for ``tinkjax/`` models, else Hugging Face."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

__all__ = ["load_tokenizer"]


def load_tokenizer(model_name: str, tokenizer_id: str | None = None) -> Any:
    """The tokenizer of ``model_name`` (``tokenizer_id`` wins when the server names one).

    Raises:
        ImportError: a non-``tinkjax/`` model and ``transformers`` is not installed.
    """
    if model_name.startswith("tinkjax/") or (tokenizer_id or "").startswith("tinkjax/"):
        from tinkjax.models import ByteTokenizer

        return ByteTokenizer()
    if tokenizer_id and (Path(tokenizer_id) / "tokenizer.json").is_file():
        # A local backend's model folder (a Hugging Face checkpoint it serves): read it with
        # the ``tokenizers`` library, no hub and no ``transformers`` needed.
        from tinkjax.models import HFTokenizer

        return HFTokenizer(tokenizer_id)
    if importlib.util.find_spec("transformers") is None:
        raise ImportError(
            f"the tokenizer of model {model_name!r} needs the 'transformers' package; "
            "install it with `pip install transformers`"
        )
    from transformers import AutoTokenizer

    ident = (tokenizer_id.split(":", 1)[0] if tokenizer_id else None) or model_name
    return AutoTokenizer.from_pretrained(ident)
