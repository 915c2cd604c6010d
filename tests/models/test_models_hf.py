"""Hugging Face Llama / Qwen2 / Qwen3 checkpoints from a local folder: config parsing, exact
forward logprobs against an independent NumPy float64 implementation, training, sampling,
PEFT round trip, and the tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tinkjax.models import (
    AdamHyper,
    DatumArrays,
    FwdBwdItem,
    HFTokenizer,
    ModelRuntime,
    SampleJob,
    load_hf_config,
)

from .hf_checkpoints import CORPUS, reference_logprobs, write_checkpoint

ARCHS = ("llama", "qwen2", "qwen3")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf")
    # qwen2 in two shards with an index, the others in one file.
    return {
        a: write_checkpoint(root / a, a, seed=i, shards=2 if a == "qwen2" else 1)
        for i, a in enumerate(ARCHS)
    }


@pytest.fixture(scope="module")
def runtimes(checkpoints: dict[str, Path]) -> dict[str, ModelRuntime]:
    return {
        a: ModelRuntime(f"tiny-{a}", config=load_hf_config(p), adapter_slots=2)
        for a, p in checkpoints.items()
    }


def _datum(tok: HFTokenizer, text: str) -> DatumArrays:
    ids = np.asarray(tok.encode(text), np.int64)
    return DatumArrays(
        ids[:-1], {"target_tokens": ids[1:], "weights": np.ones(len(ids) - 1, np.float32)}
    )


def test_config_fields_of_each_architecture(checkpoints: dict[str, Path]) -> None:
    llama = load_hf_config(checkpoints["llama"])
    assert (llama.arch, llama.n_kv_heads, llama.head_dim, llama.tie_embeddings) == (
        "llama", 2, 16, False,
    )  # fmt: skip
    assert llama.rope_scaling == (8.0, 1.0, 4.0, 32.0)
    assert not llama.qkv_bias
    assert not llama.qk_norm
    qwen2 = load_hf_config(checkpoints["qwen2"])
    assert (qwen2.qkv_bias, qwen2.tie_embeddings, qwen2.qk_norm) == (True, True, False)
    assert (qwen2.rope_theta, qwen2.norm_eps) == (1e6, 1e-6)
    qwen3 = load_hf_config(checkpoints["qwen3"])
    assert (qwen3.qk_norm, qwen3.head_dim, qwen3.q_dim) == (True, 32, 128)  # head_dim != d / H
    assert qwen3.source == str(checkpoints["qwen3"].resolve())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model_type": "gpt2"}, "model_type 'gpt2' is not supported"),
        ({"hidden_act": "gelu"}, "hidden_act 'gelu'"),
        ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope_type 'yarn'"),
        ({"num_key_value_heads": 3}, "n_heads 4 is not a multiple of n_kv_heads 3"),
        ({"hidden_size": "64"}, "hidden_size must be int"),
        ({"use_sliding_window": True}, "use_sliding_window"),
    ],
)
def test_unsupported_configs_are_refused_naming_the_field(
    checkpoints: dict[str, Path], tmp_path: Path, change: dict[str, object], message: str
) -> None:
    cfg = json.loads((checkpoints["qwen2"] / "config.json").read_text()) | change
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=message):
        load_hf_config(tmp_path)


def test_missing_files_and_tensors_are_named(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"config\.json: not found"):
        load_hf_config(tmp_path)
    for name in ("config.json", "tokenizer.json"):
        (tmp_path / name).write_text((checkpoints["llama"] / name).read_text())
    with pytest.raises(ValueError, match=r"no model\.safetensors"):
        ModelRuntime("x", config=load_hf_config(tmp_path))
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(checkpoints["llama"] / "model.safetensors"))
    del tensors["model.layers.1.mlp.up_proj.weight"]
    tensors["model.norm.weight"] = tensors["model.norm.weight"][:10]
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match=r"model.layers.1.mlp.up_proj.weight is missing"):
        ModelRuntime("x", config=load_hf_config(tmp_path))


@pytest.mark.parametrize("arch", ARCHS)
def test_forward_logprobs_match_the_numpy_reference(
    arch: str, checkpoints: dict[str, Path], runtimes: dict[str, ModelRuntime]
) -> None:
    rt = runtimes[arch]
    datum = _datum(rt.tokenizer, CORPUS[:90])  # type: ignore[arg-type]
    assert len(datum.input_tokens) > 40  # past original_max_position_embeddings (llama3 scaling)
    want = reference_logprobs(
        checkpoints[arch],
        datum.input_tokens.tolist(),
        datum.loss_fn_inputs["target_tokens"].tolist(),
    )
    rt.create_adapter("fwd", rank=4, seed=1)
    try:
        [res] = rt.forward_backward(
            [FwdBwdItem("fwd", [datum], "cross_entropy")], forward_only=True
        )
    finally:
        rt.remove_adapter("fwd")
    got = res.outputs[0]["logprobs"]
    # float32 model vs float64 reference: a fresh adapter (b = 0) is the base model.
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4)


def test_training_lowers_the_loss_and_the_adapter_round_trips(
    runtimes: dict[str, ModelRuntime],
) -> None:
    # One architecture (compiles are the cost); qwen3 has the most parts (GQA, head_dim,
    # q/k norms). The forward test above covers every architecture's numerics.
    rt = runtimes["qwen3"]
    datum = _datum(rt.tokenizer, CORPUS[:60])  # type: ignore[arg-type]
    item = FwdBwdItem("train", [datum], "cross_entropy")
    rt.create_adapter("train", rank=8, seed=3)
    try:
        losses = []
        for _ in range(6):
            [res] = rt.forward_backward([item], forward_only=False)
            losses.append(res.metrics["loss:sum"])
            rt.optim_step("train", AdamHyper(learning_rate=1e-2))
        assert losses[-1] < 0.8 * losses[0], losses
        # PEFT export of every linear layer (attention and MLP and the head) re-imports to
        # the same logprobs.
        tensors, peft_cfg = rt.export_peft("train")
        modules = {k.split(".")[-3] for k in tensors if ".layers." in k}
        assert modules == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                           "down_proj"}  # fmt: skip
        snap = rt.snapshot_from_peft(tensors, peft_cfg)
        prompt = datum.input_tokens[:8]
        sample_a = rt.sample(SampleJob(rt.snapshot("train"), prompt, max_tokens=6, temperature=0.0))
        sample_b = rt.sample(SampleJob(snap, prompt, max_tokens=6, temperature=0.0))
        assert sample_a.sequences[0].tokens.tolist() == sample_b.sequences[0].tokens.tolist()
        np.testing.assert_allclose(
            sample_a.sequences[0].logprobs, sample_b.sequences[0].logprobs, rtol=1e-5, atol=1e-5
        )
        # The trained adapter changed the model: greedy samples differ from the base model's.
        base = rt.sample(SampleJob(None, prompt, max_tokens=6, temperature=0.0))
        assert not np.allclose(base.sequences[0].logprobs, sample_a.sequences[0].logprobs)
    finally:
        rt.remove_adapter("train")


def test_sampling_decodes_and_stops(runtimes: dict[str, ModelRuntime]) -> None:
    rt = runtimes["qwen2"]  # biases, tied embeddings, a sharded checkpoint
    tok = rt.tokenizer
    prompt = np.asarray(tok.encode("The sea was"), np.int64)
    out = rt.sample(SampleJob(None, prompt, num_samples=3, max_tokens=12, temperature=1.0, seed=7,
                              include_prompt_logprobs=True))  # fmt: skip
    assert len(out.sequences) == 3
    for seq in out.sequences:
        assert 0 < len(seq.tokens) <= 12
        assert np.all(seq.logprobs <= 0)
        assert np.isfinite(seq.logprobs).all()
        assert isinstance(tok.decode(seq.tokens.tolist()), str)
    assert out.prompt_logprobs is not None
    assert np.isfinite(out.prompt_logprobs[1:]).all()
    # A stop token ends a completion, kept as its last token.
    greedy = rt.sample(SampleJob(None, prompt, max_tokens=8, temperature=0.0))
    first = int(greedy.sequences[0].tokens[0])
    stopped = rt.sample(
        SampleJob(None, prompt, max_tokens=8, temperature=0.0, stop_token_seqs=[[first]])
    )
    assert stopped.sequences[0].tokens.tolist() == [first]
    assert stopped.sequences[0].stop_reason == "stop"


def test_tokenizer_reads_the_folder(checkpoints: dict[str, Path]) -> None:
    tok = HFTokenizer(checkpoints["qwen3"])
    ids = tok.encode("The lamp turned<|endoftext|>")
    assert ids[-1] == tok.eos_token_id == 0  # the special string encodes to its id
    assert tok.decode(ids) == "The lamp turned"
    assert tok.decode(ids, skip_special_tokens=False) == "The lamp turned<|endoftext|>"
    assert tok.all_special_ids == [0, 1, 2]
    assert len(tok) == load_hf_config(checkpoints["qwen3"]).vocab_size
