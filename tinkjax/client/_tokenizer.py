"""Tokenizers for a model name: the byte tokenizer for ``tinkjax/`` models, else Hugging Face."""

from __future__ import annotations

import importlib.util
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
    if importlib.util.find_spec("transformers") is None:
        raise ImportError(
            f"the tokenizer of model {model_name!r} needs the 'transformers' package; "
            "install it with `pip install transformers`"
        )
    from transformers import AutoTokenizer

    ident = (tokenizer_id.split(":", 1)[0] if tokenizer_id else None) or model_name
    return AutoTokenizer.from_pretrained(ident)
