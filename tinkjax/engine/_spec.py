"""Transitional alias of :mod:`tinkjax.engine._term_specs` (this module's former name).

``tinkjax.client._custom`` imports :func:`validate_regularizers` from here; the public name is
``tinkjax.engine.validate_regularizers``. Delete this module once the client uses that.
"""

from tinkjax.engine._term_specs import validate_regularizers

__all__ = ["validate_regularizers"]
