"""tinker-cookbook's ``weights.download`` against the local backend: a training checkpoint of
the official SDK's loop is exported with ``save_weights_external`` (encrypted to a key the
cookbook makes for the download), fetched from ``RestClient.get_external_weights_urls`` and
decrypted into safetensors files whose weights are the trained adapter's.

Needs the backend's external weights (issue 12, point 3, branch s6-weights): on a branch
without them this fails with the 404 of ``/save_weights_external``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("tinker_cookbook")
pytest.importorskip("pyrage")

MODEL = "tinkjax/bytelm-1m"


def test_weights_download_of_a_trained_checkpoint(
    local_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tinker
    from safetensors.numpy import load_file
    from tinker_cookbook import weights

    monkeypatch.setenv("TINKER_API_KEY", "tml-compat-weights")
    monkeypatch.setenv("TINKER_TELEMETRY", "0")
    service = tinker.ServiceClient(base_url=local_server.base_url)
    tc = service.create_lora_training_client(base_model=MODEL, rank=4).result()
    toks = list(b"the sky is blue")
    datum = tinker.Datum(
        model_input=tinker.ModelInput.from_ints(toks[:-1]),
        loss_fn_inputs={"target_tokens": toks[1:], "weights": [1.0] * (len(toks) - 1)},
    )
    tc.forward_backward([datum], "cross_entropy").result()
    tc.optim_step(tinker.AdamParams(learning_rate=1e-2)).result()
    path = tc.save_state("export").result().path

    out = weights.download(
        tinker_path=path, output_dir=str(tmp_path / "w"), base_url=local_server.base_url
    )
    files = sorted(Path(out).rglob("*.safetensors"))
    assert files, sorted(os.listdir(out))
    tensors = {k: v for f in files for k, v in load_file(str(f)).items()}
    assert tensors
    assert all(np.isfinite(v).all() for v in tensors.values())
    assert any(np.abs(v).max() > 0 for v in tensors.values())  # trained, not all zeros
