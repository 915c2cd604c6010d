"""``tinkjax run`` / ``tinkjax sample``: sample from a base model or saved sampler weights.

``tinkjax run list`` and ``tinkjax run info RUN_ID`` list training runs, as the official
``tinker run`` does; any other ``tinkjax run`` samples, as Tinkex's does.

The prompt is ``--prompt TEXT`` or ``--prompt-file FILE``: a file holding a JSON array of token
ids (or ``{"tokens": [...]}``) is sent as those tokens, any other file as its text, as is.
Text is encoded with the model's tokenizer and samples are decoded with it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from tinkjax.cli._common import (
    CliError,
    add_connection_arguments,
    add_format_arguments,
    connect,
    output_format,
    print_json,
    print_table,
    to_builtins,
)

__all__ = [
    "HELP",
    "SAMPLE_HELP",
    "add_arguments",
    "add_sample_arguments",
    "load_prompt",
    "response_to_dict",
    "run",
    "run_sample",
]

HELP = "sample from a model (tinkjax run --help); tinkjax run list / info: training runs"
SAMPLE_HELP = "sample from a base model or saved sampler weights (the same as tinkjax run)"


def _positive(name: str) -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name}: expected an integer, got {text!r}") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"{name}: expected >= 1, got {value}")
        return value

    return parse


def add_sample_arguments(p: argparse.ArgumentParser) -> None:
    """The sampling options (``tinkjax run`` and ``tinkjax sample``)."""
    src = p.add_argument_group("model (one of)")
    src.add_argument("--base-model", default=None, help="a base model (tinkjax models lists them)")
    src.add_argument(
        "--model-path", default=None, help="saved sampler weights, tinker://RUN/sampler_weights/X"
    )
    pr = p.add_argument_group("prompt (one of)")
    pr.add_argument("--prompt", default=None, help="the prompt text")
    pr.add_argument(
        "--prompt-file",
        default=None,
        metavar="FILE",
        help='a file: a JSON array of token ids (or {"tokens": [...]}), else its text',
    )
    p.add_argument("--max-tokens", type=_positive("--max-tokens"), default=64, help="default 64")
    p.add_argument("--temperature", type=float, default=1.0, help="default 1.0 (0: greedy)")
    p.add_argument("--top-k", type=int, default=-1, help="default -1 (off)")
    p.add_argument("--top-p", type=float, default=1.0, help="default 1.0 (off)")
    p.add_argument("--num-samples", type=_positive("--num-samples"), default=1, help="default 1")
    p.add_argument("--seed", type=int, default=None, help="sampling seed")
    p.add_argument(
        "--stop", action="append", default=None, metavar="TEXT", help="a stop string (repeatable)"
    )
    p.add_argument("--json", action="store_true", help="print the full sample response as JSON")
    p.add_argument(
        "--output", default=None, metavar="FILE", help="write the output to FILE, not stdout"
    )
    add_connection_arguments(p)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """``tinkjax run``: the sampling options, and the ``list`` / ``info`` actions."""
    add_sample_arguments(p)
    sub = p.add_subparsers(dest="run_action", metavar="ACTION", required=False)
    ls = sub.add_parser("list", help="list training runs", description="List your training runs.")
    ls.add_argument("--limit", type=int, default=20, help="at most this many (0: all; default 20)")
    ls.add_argument("--offset", type=int, default=0, help="skip this many (default 0)")
    add_format_arguments(ls)
    add_connection_arguments(ls)
    info = sub.add_parser(
        "info", help="show one training run", description="Show one training run."
    )
    info.add_argument("run_id", help="the training run id")
    add_format_arguments(info)
    add_connection_arguments(info)


def load_prompt(prompt: str | None, prompt_file: str | None) -> str | list[int]:
    """The prompt: text, or token ids from a JSON file.

    Raises:
        CliError: (usage) neither or both given, or the file cannot be read.
    """
    if (prompt is None) == (prompt_file is None):
        raise CliError("give exactly one of --prompt and --prompt-file", "usage")
    if prompt is not None:
        return prompt
    assert prompt_file is not None
    try:
        content = Path(prompt_file).read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"--prompt-file {prompt_file!r}: {exc}", "usage") from None
    try:
        doc = json.loads(content)
    except ValueError:
        return content
    tokens = doc.get("tokens") if isinstance(doc, dict) else doc
    if isinstance(tokens, list) and all(
        isinstance(t, int) and not isinstance(t, bool) for t in tokens
    ):
        if not tokens:
            raise CliError(f"--prompt-file {prompt_file!r}: the token list is empty", "usage")
        if any(t < 0 for t in tokens):
            raise CliError(f"--prompt-file {prompt_file!r}: negative token id", "usage")
        return list(tokens)
    return content


def _decode(tokenizer: Any, tokens: list[int]) -> str | None:
    if tokenizer is None:
        return None
    try:
        return str(tokenizer.decode(tokens))
    except Exception:
        return None


def _topk(topk: Any) -> Any:
    """Top-k prompt logprobs as ``{"token_ids": [[...]], "logprobs": [[...]]}`` (``[length,
    k]``), or ``None``."""
    if topk is None:
        return None
    import numpy as np

    return {
        "token_ids": np.asarray(topk.token_ids).tolist(),
        "logprobs": np.asarray(topk.logprobs).tolist(),
    }


def response_to_dict(response: Any, tokenizer: Any = None) -> dict[str, Any]:
    """The JSON form of a ``SampleResponse`` (each sequence also with its decoded ``text``)."""
    return {
        "sequences": [
            {
                "tokens": [int(t) for t in seq.tokens],
                "logprobs": None if seq.logprobs is None else [float(x) for x in seq.logprobs],
                "stop_reason": str(seq.stop_reason),
                "text": _decode(tokenizer, [int(t) for t in seq.tokens]),
            }
            for seq in response.sequences
        ],
        "prompt_logprobs": response.prompt_logprobs,
        "topk_prompt_logprobs": _topk(response.topk_prompt_logprobs_np),
        "type": response.type,
    }


def _plain(result: dict[str, Any]) -> str:
    blocks = []
    for i, seq in enumerate(result["sequences"], 1):
        text = seq["text"] if seq["text"] is not None else json.dumps(seq["tokens"])
        meta = [f"stop_reason={seq['stop_reason']}"]
        if seq["logprobs"]:
            meta.append(f"avg_logprob={sum(seq['logprobs']) / len(seq['logprobs']):.3f}")
        blocks.append(f"Sample {i}:\n{text}\n{' | '.join(meta)}")
    return "\n\n".join(blocks)


def run_sample(args: argparse.Namespace) -> int:
    """Sample and print (or write) the samples."""
    from tinkjax.types import ModelInput, SamplingParams

    if (args.base_model is None) == (args.model_path is None):
        raise CliError("give exactly one of --base-model and --model-path", "usage")
    if args.model_path is not None and not args.model_path.startswith("tinker://"):
        raise CliError(f"--model-path {args.model_path!r} must start with 'tinker://'", "usage")
    prompt = load_prompt(args.prompt, args.prompt_file)
    try:
        params = SamplingParams(
            max_tokens=args.max_tokens, temperature=args.temperature, top_k=args.top_k,
            top_p=args.top_p, seed=args.seed, stop=args.stop,
        )  # fmt: skip
    except (ValueError, TypeError) as exc:
        raise CliError(str(exc), "usage") from None
    conn = connect(args)
    service = conn.service()
    try:
        sampler = service.create_sampling_client(
            model_path=args.model_path, base_model=args.base_model
        ).result()
        try:
            tokenizer: Any = sampler.get_tokenizer()
        except Exception as exc:
            if isinstance(prompt, str):
                raise CliError(
                    f"no tokenizer for {sampler.get_base_model()!r} to encode --prompt text "
                    f"({exc}); give token ids with --prompt-file",
                    "usage",
                ) from None
            tokenizer = None
        tokens = list(tokenizer.encode(prompt)) if isinstance(prompt, str) else prompt
        if not tokens:
            raise CliError("the prompt encodes to no tokens", "usage")
        print(f"sampling {args.num_samples} x {args.max_tokens} tokens...", file=sys.stderr)
        response = sampler.sample(
            prompt=ModelInput.from_ints(tokens), num_samples=args.num_samples,
            sampling_params=params,
        ).result()  # fmt: skip
    finally:
        service.close()
    result = response_to_dict(response, tokenizer)
    as_json = args.json or getattr(args, "global_format", None) == "json"
    text = json.dumps(result, indent=2) if as_json else _plain(result)
    if args.output:
        out = Path(args.output)
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(text + "\n", "utf-8")
        except OSError as exc:
            raise CliError(f"--output {args.output!r}: {exc}", "usage") from None
        print(f"wrote {len(result['sequences'])} sample(s) to {out}", file=sys.stderr)
    else:
        print(text)
    return 0


def _run_row(r: Any) -> list[object]:
    lora = f"rank {r.lora_rank}" if r.is_lora and r.lora_rank else ("yes" if r.is_lora else "no")
    last = r.last_checkpoint.checkpoint_id if r.last_checkpoint else None
    return [r.training_run_id, r.base_model, lora, last, "failed" if r.corrupted else "ok"]


def _run_list(args: argparse.Namespace) -> int:
    if args.limit < 0 or args.offset < 0:
        raise CliError(f"--limit {args.limit} and --offset {args.offset} must be >= 0", "usage")
    fmt = output_format(args)
    with connect(args).rest() as rest:
        runs: list[Any] = []
        total: int | None = None
        offset = args.offset
        while args.limit == 0 or len(runs) < args.limit:
            page = 100 if args.limit == 0 else min(100, args.limit - len(runs))
            resp = rest.list_training_runs(limit=page, offset=offset).result()
            total = resp.cursor.total_count if resp.cursor is not None else total
            runs.extend(resp.training_runs)
            offset += len(resp.training_runs)
            if len(resp.training_runs) < page or (total is not None and offset >= total):
                break
    if fmt == "json":
        print_json({"runs": [to_builtins(r) for r in runs], "total": total, "shown": len(runs)})
    else:
        print_table(
            ["Run ID", "Base Model", "LoRA", "Last Checkpoint", "Status"],
            [_run_row(r) for r in runs],
            title=f"{len(runs)} training run(s)" + (f" of {total}" if total is not None else ""),
        )
    return 0


def _run_info(args: argparse.Namespace) -> int:
    fmt = output_format(args)
    with connect(args).rest() as rest:
        run = rest.get_training_run(args.run_id).result()
    if fmt == "json":
        print_json(to_builtins(run))
    else:
        d = to_builtins(run)
        rows = [[k, json.dumps(v) if isinstance(v, dict | list) else v] for k, v in d.items()]
        print_table(["Property", "Value"], rows, title=f"Training run {run.training_run_id}")
    return 0


def run(args: argparse.Namespace) -> int:
    """``tinkjax run``: sample, or ``list`` / ``info`` training runs."""
    action = getattr(args, "run_action", None)
    if action == "list":
        return _run_list(args)
    if action == "info":
        return _run_info(args)
    return run_sample(args)
