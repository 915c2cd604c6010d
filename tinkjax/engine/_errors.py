"""Errors raised by the custom-loss engine (defined in :mod:`tinkjax.errors`).

```
TinkerError
 ├── EngineInputError (ValueError)   bad data, shapes or specs, found before anything is compiled
 └── CustomLossError (RuntimeError)  a step failed; nothing was (or may be) sent
      ├── NonFiniteError             a value or gradient is NaN/Inf (names the term and datum)
      └── RegularizerError           a regularizer's ``prepare`` step failed or timed out
```
"""

from tinkjax.errors import CustomLossError, EngineInputError, NonFiniteError, RegularizerError

__all__ = ["CustomLossError", "EngineInputError", "NonFiniteError", "RegularizerError"]
