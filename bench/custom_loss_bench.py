"""forward_backward_custom, tinkjax (JAX engine) vs the official SDK (torch), side by side.

Both clients train the same LoRA model on a ``tinkjax serve`` subprocess (the default model),
with the same data and the same loss: cross-entropy plus four regularizers (L1 on logprobs,
sampled-token entropy bonus, L2 on probabilities, variance of per-sequence mean logprobs), with
every term's gradient norm. tinkjax computes everything in one compiled program
(``track_grad_norms=True``); the official SDK runs the loss in eager torch and, as it has no
per-term reporting, gets each term's norm from its own ``torch.autograd.grad`` call (one
backward per term) before its own ``loss.backward()``.

Measured per step, medians over warm steps, in one run, the two SDKs taking turns in three
interleaved rounds per size (so a drift of the machine's speed hits both alike):

* ``step``: wall time of ``forward_backward_custom(...).result()``;
* ``client-side``: the part of the step during which nothing server-side was active for it
  (no HTTP handler of a step endpoint, no worker job, no JAX call), from the timestamps of
  ``bench/timed_server.py`` (the same server as ``tinkjax serve``) on the machine's one
  monotonic clock: the client's own work, the loss, and the wire;
* ``server``: the rest of the step (``step − client-side``);
* ``client CPU``: CPU time of the client process (all its threads) during the step — the
  server is another process, so this is exactly the client's own work, and it is steadier
  than wall-clock attribution when the machine is busy;
* ``loss``: the loss computation alone (tinkjax: the engine call, from its
  ``custom_loss.start/stop`` events; official: the user ``loss_fn`` with its per-term
  ``autograd.grad`` calls plus the SDK's ``loss.backward()``, timed with a tensor hook).

Needs torch (CPU wheel) next to tinkjax's dev install: ``pip install torch==2.13.0``. Run:
``python bench/custom_loss_bench.py [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

import _harness as H  # noqa: E402

#: Each size's warm steps run as this many interleaved rounds (tinkjax, official, tinkjax, …).
ROUNDS = 3
WEIGHTS = {"l1": 0.01, "entropy": -0.02, "l2": 0.05, "sequence_variance": 0.5}


def make_data(n: int, length: int, seed: int) -> list[Any]:
    from tinkjax.types import Datum, ModelInput, TensorData

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        toks = rng.integers(0, 256, length + 1)
        out.append(
            Datum(
                model_input=ModelInput.from_ints(toks[:-1].tolist()),
                loss_fn_inputs={
                    "target_tokens": TensorData.from_numpy(toks[1:].astype(np.int64)),
                    "weights": TensorData.from_numpy(np.ones(length, np.float32)),
                },
            )
        )
    return out


def to_official(data: list[Any]) -> list[Any]:
    import tinker

    return [
        tinker.Datum(
            model_input=tinker.ModelInput.from_ints(d.model_input.to_ints()),
            loss_fn_inputs={
                "target_tokens": d.loss_fn_inputs["target_tokens"].to_numpy().tolist(),
                "weights": d.loss_fn_inputs["weights"].to_numpy().tolist(),
            },
        )
        for d in data
    ]


class TorchLoss:
    """The same loss in torch, with one ``autograd.grad`` per term for its norm."""

    def __init__(self) -> None:
        self.loss_s: list[float] = []
        self.norms: dict[str, float] = {}
        self._t_return = 0.0

    def __call__(self, data: list[Any], logprobs: list[Any]) -> tuple[Any, dict[str, float]]:
        import torch

        t0 = time.perf_counter()
        weights = [torch.as_tensor(d.loss_fn_inputs["weights"].to_numpy()) for d in data]
        flat = torch.cat(logprobs)
        n_tok = flat.numel()
        base = sum((-(lp * w)).sum() for lp, w in zip(logprobs, weights, strict=True))
        l1 = flat.abs().sum()
        entropy = -flat.sum() / n_tok
        l2 = ((flat.exp() - 1.0) ** 2).sum() / n_tok
        means = torch.stack([lp.mean() for lp in logprobs])
        var = ((means - means.mean()) ** 2).mean()
        terms = {"base": base, "l1": l1, "entropy": entropy, "l2": l2, "sequence_variance": var}
        for name, value in terms.items():
            grads = torch.autograd.grad(value, logprobs, retain_graph=True)
            self.norms[name] = float(torch.sqrt(sum((g * g).sum() for g in grads)))
        total = base + sum(WEIGHTS[k] * terms[k] for k in WEIGHTS)
        self.loss_s.append(time.perf_counter() - t0)
        self._t_return = time.perf_counter()

        def hook(grad: Any) -> Any:
            # fires when the SDK's loss.backward() reaches this leaf: add the backward time
            self.loss_s[-1] += time.perf_counter() - self._t_return
            return grad

        logprobs[0].register_hook(hook)
        return total, {f"{k}/value": float(v.detach()) for k, v in terms.items()}


class Side:
    """One SDK's training client on the shared server, stepping the same data; per warm
    step it keeps the wall window, the process CPU time and the loss time."""

    def __init__(self) -> None:
        self.windows: list[tuple[float, float]] = []
        self.cpu: list[float] = []
        self.loss_s: list[float] = []

    def one_step(self) -> None:
        raise NotImplementedError

    def run(self, steps: int, *, warm: bool = True) -> None:
        for _ in range(steps):
            mark = len(self._loss_log())
            t0, c0 = time.monotonic(), time.process_time()
            self.one_step()
            t1, c1 = time.monotonic(), time.process_time()
            if warm:
                self.windows.append((t0, t1))
                self.cpu.append(c1 - c0)
                self.loss_s.extend(self._loss_log()[mark:])

    def _loss_log(self) -> list[float]:
        raise NotImplementedError

    def raw(self) -> dict[str, Any]:
        return {"windows": self.windows, "cpu_s": self.cpu, "loss_s": self.loss_s}


class TinkjaxSide(Side):
    def __init__(self, url: str, model: str, data: list[Any]) -> None:
        super().__init__()
        import tinkjax.regularizers as R
        from tinkjax import events
        from tinkjax.client import ServiceClient

        self.regs = [
            R.l1(weight=WEIGHTS["l1"]),
            R.entropy(weight=WEIGHTS["entropy"]),
            R.l2(weight=WEIGHTS["l2"], target="probs", center=1.0, reduction="mean"),
            R.sequence_variance(weight=WEIGHTS["sequence_variance"]),
        ]
        self.engine_s: list[float] = []
        events.attach(
            "bench",
            "tinkjax.custom_loss.stop",
            lambda n, m, md: self.engine_s.append(m["duration"]),
        )
        self.service = ServiceClient(base_url=url, api_key="tml-bench-tinkjax")
        self.tc = self.service.create_lora_training_client(model, rank=16, seed=0).result()
        self.data = data
        self.out: Any = None

    def one_step(self) -> None:
        self.out = self.tc.forward_backward_custom(
            self.data, "cross_entropy", regularizers=self.regs, track_grad_norms=True
        ).result()

    def _loss_log(self) -> list[float]:
        return self.engine_s

    def close(self) -> dict[str, float]:
        from tinkjax import events

        events.detach("bench")
        self.service.close()
        out = self.out
        return {"base": out.base_grad_norm} | {k: r.grad_norm for k, r in out.regularizers.items()}


class OfficialSide(Side):
    def __init__(self, url: str, model: str, data: list[Any]) -> None:
        super().__init__()
        os.environ.update(
            TINKER_BASE_URL=url, TINKER_API_KEY="tml-bench-official", TINKER_TELEMETRY="0"
        )
        import tinker

        self.service = tinker.ServiceClient()
        self.tc = self.service.create_lora_training_client(
            base_model=model, rank=16, seed=0
        ).result()
        self.data = to_official(data)
        self.loss = TorchLoss()

    def one_step(self) -> None:
        self.tc.forward_backward_custom(self.data, self.loss).result()

    def _loss_log(self) -> list[float]:
        return self.loss.loss_s

    def close(self) -> dict[str, float]:
        return dict(self.loss.norms)


def summarise(raw: dict[str, Any], rec: dict[str, list[dict[str, Any]]]) -> dict[str, float]:
    steps = [(b - a) * 1e3 for a, b in raw["windows"]]
    client = [H.breakdown(a, b, rec)["client_wire"] for a, b in raw["windows"]]
    return {
        "step_ms": statistics.median(steps),
        "server_ms": statistics.median(s - c for s, c in zip(steps, client, strict=True)),
        "client_ms": statistics.median(client),
        "cpu_ms": statistics.median(raw["cpu_s"]) * 1e3,
        "loss_ms": statistics.median(raw["loss_s"]) * 1e3,
    }


def write_markdown(result: dict[str, Any], command: str) -> None:
    lines = [
        "## Custom loss (forward_backward_custom)",
        "",
        f"Command: `{command}` ({result['machine']}; load average {result['load']} at start). "
        "Server: `bench/timed_server.py` in a subprocess (`tinkjax serve` plus timestamps), "
        f"model {result['model']} (client-side work does not depend on the model; the small "
        "model keeps the server's share short). Loss: cross-entropy + 4 regularizers (L1 on "
        "logprobs, entropy bonus, L2 on probabilities, sequence variance) with every term's "
        "gradient norm. Medians over the warm steps of each size (*steps*, in 3 rounds "
        "interleaved with the other SDK's; more where a step is short and its client-side "
        "share a few ms of a noisy machine), ms. Official SDK "
        f"{result['tinker']} with torch {result['torch']} (CPU): one `autograd.grad` per term "
        "for the norms. *client-side* = the part of a step when nothing server-side was active "
        "for it (client code, loss, encoding, and the wire); *loss* = the loss and per-term "
        "norms alone (tinkjax: the engine call; official: `loss_fn` with its `autograd.grad` "
        "calls plus the SDK's `loss.backward()`).",
        "",
        "| batch | tokens | steps | step tinkjax | step official | client-side tinkjax | client-side "
        "official | official / tinkjax | client CPU tinkjax | client CPU official | official / "
        "tinkjax | loss tinkjax | loss official | norms agree to |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for case in result["cases"]:
        t, o = case["tinkjax"], case["official"]
        ratio = o["client_ms"] / t["client_ms"]
        cpu_ratio = o["cpu_ms"] / t["cpu_ms"]
        lines.append(
            f"| {case['batch']} × {case['length']} | {case['batch'] * case['length']:,} | "
            f"{case['steps']} | "
            f"{t['step_ms']:.1f} | {o['step_ms']:.1f} | {t['client_ms']:.1f} | "
            f"{o['client_ms']:.1f} | **{ratio:.2f}×** | {t['cpu_ms']:.1f} | {o['cpu_ms']:.1f} | "
            f"**{cpu_ratio:.2f}×** | {t['loss_ms']:.1f} | {o['loss_ms']:.1f} "
            f"| {case['norm_max_rel_diff']:.0e} |"
        )

    def verdict(key: str) -> str:
        ratios = [c["official"][key] / c["tinkjax"][key] for c in result["cases"]]
        met = sum(r >= 3 for r in ratios)
        word = (
            "met at every size"
            if met == len(ratios)
            else (f"met at {met} of {len(ratios)} sizes" if met else "not met")
        )
        return f"**{word}** ({min(ratios):.2f}× to {max(ratios):.2f}×)"

    lines += [
        "",
        "Goal (tinkjax ≥ 3× faster client-side per step): by client-side wall time "
        f"{verdict('client_ms')}; by client CPU time {verdict('cpu_ms')}.",
        "",
    ]
    H.write_section("Custom loss (forward_backward_custom)", "\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one small size, few steps")
    parser.add_argument(
        "--sizes", default="16x128,128x255,256x255", help="datums x tokens, comma-separated"
    )
    args = parser.parse_args()
    import tinker
    import torch

    model = "tinkjax/bytelm-micro"
    sizes = (
        [(16, 128)]
        if args.quick
        else [tuple(int(x) for x in size.split("x")) for size in args.sizes.split(",")]
    )
    warmup = 2 if args.quick else 3

    def steps_for(tokens: int) -> int:
        # a small batch's step is short, its client-side share a few ms: more steps
        return 6 if args.quick else (60 if tokens <= 8192 else 15)

    load = os.getloadavg()[0]
    server = H.launch("timed", H.timed_cmd(), timed=True)
    cases = []
    try:
        for batch, length in sizes:
            steps = steps_for(batch * length)
            data = make_data(batch, length, seed=0)
            ours, theirs = (
                TinkjaxSide(server.url, model, data),
                OfficialSide(server.url, model, data),
            )
            ours.run(warmup, warm=False)
            theirs.run(warmup, warm=False)
            # interleaved rounds: a drift of the machine's speed hits both SDKs alike
            for _ in range(ROUNDS):
                ours.run(steps // ROUNDS)
                theirs.run(steps // ROUNDS)
            raw_t = ours.raw() | {"norms": ours.close()}
            raw_o = theirs.raw() | {"norms": theirs.close()}
            rec = server.timings()
            rel = max(
                abs(raw_t["norms"][k] - raw_o["norms"][k]) / max(abs(raw_o["norms"][k]), 1e-12)
                for k in raw_o["norms"]
            )
            cases.append({
                "batch": batch, "length": length, "steps": steps,
                "tinkjax": summarise(raw_t, rec), "official": summarise(raw_o, rec),
                "norm_max_rel_diff": rel, "raw": {"tinkjax": raw_t, "official": raw_o},
            })  # fmt: skip
            print(json.dumps({k: cases[-1][k] for k in ("batch", "length", "tinkjax", "official")}))
    finally:
        server.stop()
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "load": f"{load:.2f}",
        "model": model,
        "tinker": tinker.__version__,
        "torch": torch.__version__,
        "cases": cases,
    }
    out = ROOT / "results" / "custom_loss_bench.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=float))
    if not args.quick:
        write_markdown(result, "python bench/custom_loss_bench.py")


if __name__ == "__main__":
    main()
