"""Checkpoint download: stream a checkpoint archive with progress and extract it safely.

The script saves sampler weights, downloads them with a progress callback into a new folder
(``force=True`` replaces it, otherwise an existing folder is refused), and reads the extracted
PEFT adapter back: ``adapter_config.json`` names the base model and rank, and every LoRA
matrix in ``adapter_model.safetensors`` has the rank on the right axis::

    python examples/checkpoint_download.py [OUTPUT_DIR]
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from _shared import example_model, expect
from safetensors.numpy import load_file

import tinkjax


def main(output_dir: str | None = None, rank: int = 4, base_model: str | None = None) -> Path:
    """Downloads into ``output_dir`` (default: a temporary folder); returns the folder."""
    model = base_model or example_model()
    root = Path(output_dir) if output_dir else Path(tempfile.mkdtemp(prefix="tinkjax-dl-"))
    target = root / "adapter"
    with tinkjax.ServiceClient() as service:
        training = service.create_lora_training_client(model, rank=rank, seed=0).result()
        path = training.save_weights_for_sampler("download-me").result().path
        rest = service.create_rest_client()
        progress: list[tuple[int, int | None]] = []
        dest = rest.download_checkpoint(
            path, target, force=True, progress=lambda done, total: progress.append((done, total))
        ).result()
        print(f"downloaded {path} to {dest}: {progress[-1][0]} archive bytes")
        expect(progress and progress[-1][0] > 0, "the progress callback never ran")
        done, total = progress[-1]
        expect(total is None or done == total, f"downloaded {done} of {total} bytes")
        try:
            rest.download_checkpoint(path, target).result()
        except FileExistsError:
            print("a second download without force=True is refused, as it should be")
        else:
            raise AssertionError("an existing folder was overwritten without force=True")
    files = sorted(p.name for p in dest.iterdir())
    print(f"files: {files}")
    config = json.loads((dest / "adapter_config.json").read_text())
    expect(config["r"] == rank, f"adapter_config r = {config['r']}, expected {rank}")
    expect(config["base_model_name_or_path"] == model, f"base model {config}")
    tensors = load_file(dest / "adapter_model.safetensors")
    for name, array in tensors.items():
        expect(np.isfinite(array).all(), f"{name} has non-finite values")
        if ".lora_A." in name:
            expect(array.shape[0] == rank, f"{name} has shape {array.shape}")
        elif ".lora_B." in name:
            expect(array.shape[1] == rank, f"{name} has shape {array.shape}")
    n_params = sum(a.size for a in tensors.values())
    print(f"{len(tensors)} LoRA matrices, {n_params} parameters, rank {rank}")
    expect(any(".lora_A." in n for n in tensors), "no LoRA matrices in the adapter")
    return dest


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
