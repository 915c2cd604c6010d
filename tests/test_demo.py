"""The README's main job (``tinkjax demo``), shortened, on the micro model."""

from __future__ import annotations

import pytest

from tinkjax.cli._demo import build_batches, bundled_text, run_demo
from tinkjax.models import ByteTokenizer


def test_batches_are_next_token_windows() -> None:
    tokens = ByteTokenizer().encode(bundled_text())
    batches = build_batches(tokens, seq_len=16, batch_size=4, seed=0)
    assert batches
    assert all(len(b) == 4 for b in batches)
    datum = batches[0][0]
    inputs = datum.model_input.to_ints()
    targets = datum.loss_fn_inputs["target_tokens"].to_numpy().tolist()
    assert len(inputs) == len(targets) == 16
    assert inputs[1:] == targets[:-1]  # targets are the inputs shifted by one


def test_demo_trains_with_regularizers_and_samples(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ("TINKER_API_KEY", "TINKER_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    result = run_demo(
        steps=8, batch_size=4, seq_len=32, rank=4, learning_rate=1e-2, report_every=4,
        base_model="tinkjax/bytelm-micro",
    )  # fmt: skip
    out = capsys.readouterr().out
    assert result["last_loss"] < result["first_loss"]
    for name in ("base (cross_entropy)", "entropy", "sequence_variance", "l2", "grad norm"):
        assert name in out
    assert out.count("contribution") >= 2  # the table printed more than once
    assert "sample (greedy) from the trained weights" in out
