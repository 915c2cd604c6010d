"""The README's main job (``tinkjax demo``), shortened, on the micro model."""

from __future__ import annotations

import pytest

from tinkjax.cli._demo import (
    PROGRESS_LINES,
    build_batches,
    bundled_text,
    longest_shared,
    run_demo,
    split_text,
    windows,
)
from tinkjax.models import ByteTokenizer


def test_batches_are_next_token_windows_and_cover_the_text() -> None:
    tokens = ByteTokenizer().encode(bundled_text())
    every = windows(tokens, seq_len=16, stride=8)
    batches = build_batches(tokens, seq_len=16, batch_size=5, seed=0)
    assert all(len(b) == 5 for b in batches)
    seen = {tuple(d.model_input.to_ints()) for b in batches for d in b}
    assert seen == {tuple(d.model_input.to_ints()) for d in every}  # no window left out
    assert every[0].model_input.to_ints() == tokens[:16]  # the text's start is trained
    assert every[-1].loss_fn_inputs["target_tokens"].to_numpy().tolist() == tokens[-16:]
    datum = batches[0][0]
    inputs = datum.model_input.to_ints()
    targets = datum.loss_fn_inputs["target_tokens"].to_numpy().tolist()
    assert len(inputs) == len(targets) == 16
    assert inputs[1:] == targets[:-1]  # targets are the inputs shifted by one


def test_the_held_out_paragraph_is_not_trained_on() -> None:
    train, held = split_text(bundled_text())
    assert held
    assert held not in train
    assert train.startswith("The lighthouse stood")


def test_longest_shared() -> None:
    assert longest_shared(
        "xx the long stone pier yy", "at the end of the long stone pier, and"
    ) == (" the long stone pier")
    assert longest_shared("qqq", "abc") == ""


@pytest.fixture(scope="module")
def short_run() -> tuple[dict[str, object], str]:
    """One short run on the micro model, its stdout captured (not a terminal)."""
    import contextlib
    import io
    import os

    saved = {k: os.environ.pop(k) for k in ("TINKER_API_KEY", "TINKER_BASE_URL") if k in os.environ}
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer):
            result = run_demo(
                steps=6, batch_size=4, seq_len=32, rank=4, learning_rate=1e-2,
                base_model="tinkjax/bytelm-micro", sample_tokens=24,
            )  # fmt: skip
    finally:
        os.environ.update(saved)
    return result, buffer.getvalue()


def test_demo_reports_held_out_loss_terms_and_a_sample(
    short_run: tuple[dict[str, object], str],
) -> None:
    result, out = short_run
    last, first = result["last_loss"], result["first_loss"]
    assert isinstance(last, float)
    assert isinstance(first, float)
    assert last < first
    assert "held-out cross-entropy" in out
    assert "(the paragraph it never saw)" in out
    for label in ("base (cross_entropy)", "sum over tokens", "mean over tokens", "entropy",
                  "sequence_variance", "l2", "grad norm w.r.t. logprobs"):  # fmt: skip
        assert label in out
    assert "sample (greedy) from the trained weights" in out
    assert f"({len(str(result['shared']))} chars)" in out


def test_progress_is_plain_lines_when_stdout_is_not_a_terminal(
    short_run: tuple[dict[str, object], str],
) -> None:
    _, out = short_run
    assert "\r" not in out
    assert "\x1b" not in out
    assert sum(line.startswith("step ") for line in out.splitlines()) == PROGRESS_LINES
    assert max(len(line) for line in out.splitlines()) < 200
