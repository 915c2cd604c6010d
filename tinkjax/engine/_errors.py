"""Errors raised by the custom-loss engine.

```
ValueError
 └── EngineInputError            bad data, shapes or specs, found before anything is compiled
RuntimeError
 └── CustomLossError             a step failed; nothing was (or may be) sent
      ├── NonFiniteError         a value or gradient is NaN/Inf (names the term and datum)
      └── RegularizerError       a regularizer's ``prepare`` step failed or timed out
```
"""

from __future__ import annotations


class EngineInputError(ValueError):
    """Input data or a loss/regularizer spec is malformed (the message names the field)."""


class CustomLossError(RuntimeError):
    """A custom-loss step failed; the caller must not send any gradient."""


class NonFiniteError(CustomLossError):
    """A value or gradient is not finite.

    Attributes:
        term: ``"base"`` or the regularizer's name (``"loss_total"`` when no single term is at
            fault, ``"logprobs"`` when the input logprobs themselves are not finite).
        datum: index of the first datum whose gradient (or input) is not finite, or ``None``
            when only a scalar value is.
    """

    def __init__(self, message: str, *, term: str, datum: int | None) -> None:
        super().__init__(message)
        self.term = term
        self.datum = datum


class RegularizerError(CustomLossError):
    """A regularizer's asynchronous ``prepare`` step raised or timed out.

    Attributes:
        name: the regularizer's name.
    """

    def __init__(self, message: str, *, name: str) -> None:
        super().__init__(message)
        self.name = name
