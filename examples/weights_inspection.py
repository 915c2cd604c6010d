"""Weights inspection: what the service knows of checkpoints, samplers and training runs.

A LoRA model is created on attention and unembedding only (``train_mlp=False``), trained one
step and saved. The script checks the metadata three ways: ``get_training_run`` (base model,
rank, last checkpoints), ``get_weights_info_by_tinker_path`` (the same for each checkpoint,
with the ``train_*`` flags), and ``get_sampler`` for a sampler on the saved weights. It also
lists the training runs (the new one is among them)::

    python examples/weights_inspection.py
"""

from __future__ import annotations

from _shared import example_model, expect, next_token_datum

import tinkjax
from tinkjax import types


def main(rank: int = 4, base_model: str | None = None) -> dict[str, object]:
    """Returns the weights info of the saved sampler checkpoint."""
    model = base_model or example_model()
    with tinkjax.ServiceClient() as service:
        training = service.create_lora_training_client(model, rank=rank, train_mlp=False).result()
        tokenizer = training.get_tokenizer()
        training.forward_backward([next_token_datum(tokenizer.encode("inspect me"))],
                                  "cross_entropy").result()  # fmt: skip
        training.optim_step(types.AdamParams(learning_rate=1e-3)).result()
        state = training.save_state("inspect-state").result().path
        sampler_path = training.save_weights_for_sampler("inspect-sampler").result().path
        rest = service.create_rest_client()

        run = rest.get_training_run(training.model_id).result()
        print(f"run {run.training_run_id}: {run.base_model}, LoRA rank {run.lora_rank}, "
              f"owner {run.model_owner}")  # fmt: skip
        expect((run.base_model, run.is_lora, run.lora_rank) == (model, True, rank), f"{run}")
        expect(run.last_checkpoint is not None and run.last_checkpoint.tinker_path == state,
               "last_checkpoint is not the saved state")  # fmt: skip
        expect(run.last_sampler_checkpoint is not None
               and run.last_sampler_checkpoint.tinker_path == sampler_path,
               "last_sampler_checkpoint is not the saved sampler weights")  # fmt: skip
        by_path = rest.get_training_run_by_tinker_path(state).result()
        expect(by_path.training_run_id == run.training_run_id, "run by path differs")

        for path in (state, sampler_path):
            info = rest.get_weights_info_by_tinker_path(path).result()
            print(f"{path}: rank {info.lora_rank}, train_mlp={info.train_mlp}, "
                  f"train_attn={info.train_attn}, train_unembed={info.train_unembed}")  # fmt: skip
            expect((info.base_model, info.lora_rank) == (model, rank), f"{info}")
            expect((info.train_mlp, info.train_attn, info.train_unembed) == (False, True, True),
                   f"train flags of {path}: {info}")  # fmt: skip

        service.create_sampling_client(model_path=sampler_path).result()
        sampler_id = rest.get_session(service.session_id).result().sampler_ids[-1]
        sampler = rest.get_sampler(sampler_id).result()
        print(f"sampler {sampler.sampler_id}: {sampler.base_model} from {sampler.model_path}")
        expect(sampler.model_path == sampler_path, f"sampler model_path {sampler.model_path!r}")
        expect(sampler.base_model == model, f"sampler base model {sampler.base_model!r}")

        listed = {r.training_run_id for r in rest.iter_training_runs()}
        expect(run.training_run_id in listed, "the run is not in list_training_runs")
    return {"base_model": info.base_model, "lora_rank": info.lora_rank,
            "train_mlp": info.train_mlp}  # fmt: skip


if __name__ == "__main__":
    main()
