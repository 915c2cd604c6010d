"""Checkpoints management: list the user's checkpoints, inspect them, delete one.

The script saves two checkpoints (training state and sampler weights), finds both in
``list_checkpoints`` (one run) and ``iter_user_checkpoints`` (all runs, paginated), reads their
metadata, deletes one and checks that it is gone and the other is not::

    python examples/checkpoints_management.py
"""

from __future__ import annotations

from _shared import example_model, expect

import tinkjax
from tinkjax import NotFoundError


def main(base_model: str | None = None) -> list[str]:
    """Returns the paths of the checkpoints left."""
    model = base_model or example_model()
    with tinkjax.ServiceClient() as service:
        training = service.create_lora_training_client(model, rank=4).result()
        state = training.save_state("management-state").result().path
        sampler = training.save_weights_for_sampler("management-sampler").result().path
        rest = service.create_rest_client()
        run = rest.list_checkpoints(training.model_id).result().checkpoints
        for c in run:
            size = "?" if c.size_bytes is None else f"{c.size_bytes} bytes"
            print(f"{c.tinker_path}  {c.checkpoint_type}  {size}  {c.time:%Y-%m-%d %H:%M:%S}")
        expect({c.tinker_path for c in run} == {state, sampler}, "the run's checkpoints differ")
        types_ = {c.tinker_path: c.checkpoint_type for c in run}
        expect(types_ == {state: "training", sampler: "sampler"}, f"checkpoint types {types_}")
        mine = {c.tinker_path for c in rest.iter_user_checkpoints(page_size=2)}
        expect({state, sampler} <= mine, "iter_user_checkpoints missed a checkpoint")
        info = rest.get_weights_info_by_tinker_path(state).result()
        print(f"{state}: base model {info.base_model}, LoRA rank {info.lora_rank}")
        expect((info.base_model, info.lora_rank) == (model, 4), f"weights info {info}")
        rest.delete_checkpoint_from_tinker_path(sampler).result()
        left = [
            c.tinker_path for c in rest.list_checkpoints(training.model_id).result().checkpoints
        ]
        print(f"deleted {sampler}; left: {left}")
        expect(left == [state], f"after the delete: {left}")
        try:
            rest.get_weights_info_by_tinker_path(sampler).result()
        except NotFoundError:
            pass
        else:
            raise AssertionError(f"{sampler} still answers after its deletion")
    return left


if __name__ == "__main__":
    main()
