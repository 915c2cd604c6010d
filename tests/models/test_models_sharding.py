"""Hugging Face models sharded over 8 CPU devices (``--xla_force_host_platform_device_count``)
give the one-device results: forward logprobs, the loss, and the adapter after a step."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent

SCRIPT = r"""
import json, sys
from pathlib import Path
import numpy as np
sys.path.insert(0, sys.argv[1])
from hf_checkpoints import CORPUS, write_checkpoint
import jax
from tinkjax.models import (
    AdamHyper, DatumArrays, FwdBwdItem, ModelRuntime, load_hf_config, make_mesh, parse_mesh,
)

assert len(jax.devices()) == 8, jax.devices()
folder = write_checkpoint(Path(sys.argv[2]) / "qwen3", "qwen3", seed=2)
cfg = load_hf_config(folder)

def run(mesh):
    rt = ModelRuntime("tiny", config=cfg, mesh=mesh, adapter_slots=2)
    ids = rt.tokenizer.encode(CORPUS)
    data = []
    for i in range(8):  # 8 rows: split over data x fsdp
        chunk = np.asarray(ids[i * 9 : i * 9 + 24], np.int64)
        data.append(DatumArrays(chunk[:-1], {"target_tokens": chunk[1:],
                                             "weights": np.ones(len(chunk) - 1, np.float32)}))
    rt.create_adapter("a", rank=4, seed=7)
    item = FwdBwdItem("a", data, "cross_entropy")
    first = rt.forward_backward([item], forward_only=False)[0]
    rt.optim_step("a", AdamHyper(learning_rate=1e-2))
    after = rt.forward_backward([item], forward_only=True)[0]
    state = rt.export_state("a", include_optimizer=False)
    specs = {k: str(v.sharding.spec) if hasattr(v.sharding, "spec") else "single"
             for k, v in rt.base_params.items()}
    return {
        "loss": first.metrics["loss:sum"],
        "logprobs": np.concatenate([o["logprobs"] for o in first.outputs]).tolist(),
        "after": np.concatenate([o["logprobs"] for o in after.outputs]).tolist(),
        "state": {k: np.asarray(v).ravel().tolist() for k, v in state.items()},
        "specs": specs,
    }

print(json.dumps({"one": run(None), "fsdp8": run(make_mesh()),
                  "mixed": run(parse_mesh("data=2,fsdp=2,tp=2"))}))
"""


def test_eight_devices_match_one(tmp_path: Path) -> None:
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
               JAX_PLATFORMS="cpu")  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(HERE), str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=280, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    one = out["one"]
    assert set(one["specs"].values()) == {"single"}
    # Every big weight is sharded on the FSDP mesh; q/k/v/gate/up also on tp in the mixed one.
    assert "fsdp" in out["fsdp8"]["specs"]["q"]
    assert "fsdp" in out["mixed"]["specs"]["gate"]
    assert "tp" in out["mixed"]["specs"]["gate"]
    assert "tp" in out["mixed"]["specs"]["down"]
    for name in ("fsdp8", "mixed"):
        got = out[name]
        # Stated tolerance: float32 reductions in another order (sharded sums, all-gathers).
        np.testing.assert_allclose(got["loss"], one["loss"], rtol=1e-5)
        np.testing.assert_allclose(got["logprobs"], one["logprobs"], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(got["after"], one["after"], rtol=1e-4, atol=1e-4)
        for key, values in one["state"].items():
            np.testing.assert_allclose(got["state"][key], values, rtol=1e-4, atol=1e-5)
