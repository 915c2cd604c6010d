"""Built-in regularizers on target-token logprobs (formulas in each function's docstring)."""

from tinkjax.regularizers._common import Reduction, Target, reduce_tokens
from tinkjax.regularizers._divergence import consistency, consistency_value, kl, kl_value
from tinkjax.regularizers._norms import l1, l1_value, l2, l2_value
from tinkjax.regularizers._sequence import (
    entropy,
    sequence_variance,
    sequence_variance_value,
    surprisal_value,
)

__all__ = [
    "Reduction",
    "Target",
    "consistency",
    "consistency_value",
    "entropy",
    "kl",
    "kl_value",
    "l1",
    "l1_value",
    "l2",
    "l2_value",
    "reduce_tokens",
    "sequence_variance",
    "sequence_variance_value",
    "surprisal_value",
]
