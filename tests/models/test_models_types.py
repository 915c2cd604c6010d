"""``AdamHyper`` is the one declaration of the Adam keys and checks itself when built."""

from __future__ import annotations

import dataclasses
import math

import pytest

from tinkjax.models import ADAM_KEYS, AdamHyper
from tinkjax.types import AdamParams


def test_adam_keys_are_the_fields_and_match_the_wire() -> None:
    assert tuple(f.name for f in dataclasses.fields(AdamHyper)) == ADAM_KEYS
    assert set(ADAM_KEYS) <= set(AdamParams.__struct_fields__)
    assert list(AdamHyper().as_dict()) == list(ADAM_KEYS)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"learning_rate": -1.0}, "adam_params.learning_rate: expected a finite number >= 0"),
        ({"eps": math.nan}, "adam_params.eps"),
        ({"weight_decay": math.inf}, "adam_params.weight_decay"),
        ({"beta1": 1.0}, "adam_params.beta1: expected < 1"),
        ({"beta2": 1.5}, "adam_params.beta2: expected < 1"),
        ({"grad_clip_norm": True}, "adam_params.grad_clip_norm"),
    ],
)
def test_bad_hyper_parameters_are_refused_when_built(values: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AdamHyper(**values)
