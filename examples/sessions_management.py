"""Sessions management: list sessions over REST and look one up.

A ``ServiceClient`` opens a session; the training and sampling clients it creates belong to
it. The script finds its session in ``list_sessions`` / ``iter_sessions`` and checks that
``get_session`` names its training run and its sampler, and that ``get_sampler`` knows the
sampler's base model::

    python examples/sessions_management.py
"""

from __future__ import annotations

from _shared import example_model, expect

import tinkjax


def main(base_model: str | None = None) -> dict[str, object]:
    """Returns what ``get_session`` says of this script's session."""
    model = base_model or example_model()
    with tinkjax.ServiceClient() as service:
        training = service.create_lora_training_client(model, rank=4).result()
        service.create_sampling_client(base_model=model).result()
        rest = service.create_rest_client()
        session_id = service.session_id
        page = rest.list_sessions(limit=10).result()
        print(f"{len(page.sessions)} most recent session(s): {page.sessions}")
        expect(session_id in page.sessions, f"session {session_id} is not in the first page")
        every = list(rest.iter_sessions(page_size=5))
        expect(session_id in every, "iter_sessions missed this session")
        expect(len(every) == len(set(every)), "iter_sessions repeated a session")
        info = rest.get_session(session_id).result()
        print(f"session {session_id}: training runs {info.training_run_ids}, "
              f"samplers {info.sampler_ids}")  # fmt: skip
        expect(training.model_id in info.training_run_ids, "the training run is not listed")
        expect(len(info.sampler_ids) == 1, f"expected 1 sampler, got {info.sampler_ids}")
        sampler = rest.get_sampler(info.sampler_ids[0]).result()
        print(f"sampler {sampler.sampler_id}: base model {sampler.base_model}")
        expect(sampler.base_model == model, f"sampler base model {sampler.base_model!r}")
    return {"session_id": session_id, "training_run_ids": info.training_run_ids,
            "sampler_ids": info.sampler_ids}  # fmt: skip


if __name__ == "__main__":
    main()
