"""Compute kernels of the local backend's models (``tinkjax.models``).

Target-token logprobs, LoRA matmuls (single and multi-adapter) and sampling filters. Imported
as ``tinkjax.kernels``; every kernel ships with a plain-``jnp`` reference that the tests compare
it with. The custom-loss engine (``tinkjax.engine``) does not use them: it works on the
logprobs a forward pass returns.
"""

from tinkjax.kernels._logprobs import target_logprobs, target_logprobs_reference
from tinkjax.kernels._lora import (
    lora_delta,
    lora_delta_grouped,
    lora_delta_reference,
    lora_linear,
    lora_linear_reference,
)
from tinkjax.kernels._sampling import filter_logits, filter_logits_reference

__all__ = [
    "filter_logits",
    "filter_logits_reference",
    "lora_delta",
    "lora_delta_grouped",
    "lora_delta_reference",
    "lora_linear",
    "lora_linear_reference",
    "target_logprobs",
    "target_logprobs_reference",
]
