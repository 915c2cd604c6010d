"""``tinkjax checkpoint``: save one (Tinkex's command), and list / info / download / delete.

``tinkjax checkpoint --base-model M --output FILE`` creates a LoRA training model (``--rank``,
``--seed``, ``--train-mlp/attn/unembed``; or ``--model-path`` to start from a saved training
checkpoint), saves its weights for sampling and writes the metadata JSON to ``FILE`` as Tinkex
does: ``base_model``, ``model_id``, ``weights_path`` (the ``tinker://`` sampler path),
``saved_at`` (ISO 8601, UTC, seconds) and ``response`` (the save response), plus ``rank``.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
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

__all__ = ["HELP", "add_arguments", "run", "save_checkpoint"]

HELP = "save a checkpoint (--base-model, --output); list / info / download / delete them"


def _tinker_path(text: str) -> str:
    from tinkjax.types import parse_tinker_path

    try:
        parse_tinker_path(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a checkpoint path like tinker://RUN/weights/NAME ({exc})"
        ) from None
    return text


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The save options, and the management actions."""
    p.add_argument("--base-model", default=None, help="the base model to create the LoRA on")
    p.add_argument(
        "--model-path", default=None, help="start from this training checkpoint (tinker://...)"
    )
    p.add_argument("--output", dest="save_output", default=None, metavar="FILE",
                   help="where to write the metadata JSON (required to save)")  # fmt: skip
    p.add_argument("--rank", type=int, default=32, help="LoRA rank (default 32)")
    p.add_argument("--seed", type=int, default=None, help="adapter initialisation seed")
    p.add_argument("--name", default=None, help="checkpoint name (default: checkpoint-<model>)")
    for part in ("mlp", "attn", "unembed"):
        p.add_argument(
            f"--train-{part}", action=argparse.BooleanOptionalAction, default=True,
            help=f"train the {part} adapters (default: yes)",
        )  # fmt: skip
    p.add_argument(
        "--json", dest="save_json", action="store_true", help="print the metadata as JSON"
    )
    add_connection_arguments(p)
    sub = p.add_subparsers(dest="checkpoint_action", metavar="ACTION", required=False)

    ls = sub.add_parser("list", help="list checkpoints", description="List your checkpoints.")
    ls.add_argument("--run-id", default=None, help="only this training run's")
    ls.add_argument("--limit", type=int, default=20, help="at most this many (0: all; default 20)")
    ls.add_argument("--offset", type=int, default=0, help="skip this many (default 0)")
    add_format_arguments(ls)
    add_connection_arguments(ls)

    info = sub.add_parser("info", help="show one checkpoint", description="Show one checkpoint.")
    info.add_argument("path", type=_tinker_path, help="tinker://RUN/weights/NAME")
    add_format_arguments(info)
    add_connection_arguments(info)

    dl = sub.add_parser(
        "download",
        help="download and extract a checkpoint",
        description="Download a checkpoint's archive and extract it into "
        "OUTPUT/<run>_<type>_<name> (OUTPUT: the current folder by default).",
    )
    dl.add_argument("path", type=_tinker_path, help="tinker://RUN/weights/NAME")
    dl.add_argument("-o", "--output", dest="download_dir", default=None, metavar="DIR",
                    help="parent folder of the extracted checkpoint (default: .)")  # fmt: skip
    dl.add_argument("--force", action="store_true", help="replace an existing folder")
    add_format_arguments(dl)
    add_connection_arguments(dl)

    rm = sub.add_parser(
        "delete",
        help="delete checkpoints",
        description="Delete checkpoints permanently (asks first on a terminal; --yes otherwise).",
    )
    rm.add_argument("paths", nargs="+", type=_tinker_path, metavar="PATH", help="tinker://...")
    rm.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    add_format_arguments(rm)
    add_connection_arguments(rm)


# ---------------------------------------------------------------------------- save
def save_checkpoint(args: argparse.Namespace) -> dict[str, Any]:
    """Create the model, save its sampler weights, write and return the metadata."""
    if (args.base_model is None) == (args.model_path is None):
        raise CliError("give exactly one of --base-model and --model-path", "usage")
    if not args.save_output:
        raise CliError("--output FILE is required to save a checkpoint", "usage")
    if args.rank < 1:
        raise CliError(f"--rank must be >= 1, got {args.rank}", "usage")
    if args.model_path is not None:
        _tinker_path_or_usage(args.model_path, "--model-path")
    out = Path(args.save_output)
    if out.is_dir():
        raise CliError(f"--output {args.save_output!r} is a folder; give a file", "usage")
    service = connect(args).service()
    try:
        if args.model_path is not None:
            training = service.create_training_client_from_state(args.model_path).result()
        else:
            training = service.create_lora_training_client(
                args.base_model, rank=args.rank, seed=args.seed, train_mlp=args.train_mlp,
                train_attn=args.train_attn, train_unembed=args.train_unembed,
            ).result()  # fmt: skip
        base_model = training.base_model or args.base_model
        name = args.name or "checkpoint-" + str(base_model).replace("/", "-").replace(":", "-")
        response = training.save_weights_for_sampler(name).result()
        model_id = training.model_id
    finally:
        service.close()
    metadata = {
        "base_model": base_model,
        "model_id": model_id,
        "weights_path": response.path,
        "saved_at": datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z"),
        "rank": None if args.model_path is not None else args.rank,
        "response": to_builtins(response),
    }
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(metadata, indent=2) + "\n", "utf-8")
    except OSError as exc:
        raise CliError(f"--output {args.save_output!r}: {exc}", "usage") from None
    return metadata


def _tinker_path_or_usage(text: str, flag: str) -> None:
    try:
        _tinker_path(text)
    except argparse.ArgumentTypeError as exc:
        raise CliError(f"{flag}: {exc}", "usage") from None


def _save(args: argparse.Namespace) -> int:
    metadata = save_checkpoint(args)
    if args.save_json or getattr(args, "global_format", None) == "json":
        print_json(metadata)
    else:
        print(f"Checkpoint saved to {args.save_output}")
        print(f"  weights_path: {metadata['weights_path']}")
        print(f"  model_id:     {metadata['model_id']}")
    return 0


# ---------------------------------------------------------------------------- manage
def _size(n: int | None) -> str | None:
    if n is None:
        return None
    size = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1024 or unit == "TB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return None  # pragma: no cover


def _row(c: Any) -> list[object]:
    when = c.time.strftime("%Y-%m-%d %H:%M:%S") if c.time else None
    return [c.checkpoint_id, c.checkpoint_type, _size(c.size_bytes), when, c.tinker_path]


def _list(args: argparse.Namespace) -> int:
    if args.limit < 0 or args.offset < 0:
        raise CliError(f"--limit {args.limit} and --offset {args.offset} must be >= 0", "usage")
    fmt = output_format(args)
    with connect(args).rest() as rest:
        if args.run_id is not None:
            checkpoints = list(rest.list_checkpoints(args.run_id).result().checkpoints)
            total: int | None = len(checkpoints)
        else:
            checkpoints = []
            total = None
            offset = args.offset
            while args.limit == 0 or len(checkpoints) < args.limit:
                page = 1000 if args.limit == 0 else min(1000, args.limit - len(checkpoints))
                resp = rest.list_user_checkpoints(limit=page, offset=offset).result()
                total = resp.cursor.total_count if resp.cursor is not None else total
                checkpoints.extend(resp.checkpoints)
                offset += len(resp.checkpoints)
                if len(resp.checkpoints) < page or (total is not None and offset >= total):
                    break
    if fmt == "json":
        doc: dict[str, Any] = {
            "checkpoints": [to_builtins(c) for c in checkpoints],
            "total": total,
            "shown": len(checkpoints),
        }
        if args.run_id is not None:
            doc["run_id"] = args.run_id
        print_json(doc)
    else:
        where = f" of run {args.run_id}" if args.run_id else ""
        of = f" of {total}" if total is not None and total != len(checkpoints) else ""
        print_table(
            ["Checkpoint ID", "Type", "Size", "Created (UTC)", "Path"],
            [_row(c) for c in checkpoints],
            title=f"{len(checkpoints)}{of} checkpoint(s){where}",
        )
    return 0


def _find(rest: Any, path: str) -> Any:
    from tinkjax.types import parse_tinker_path

    parsed = parse_tinker_path(path)
    for c in rest.list_checkpoints(parsed.training_run_id).result().checkpoints:
        if c.tinker_path == path:
            return c
    raise CliError(f"checkpoint {path!r} not found", "not_found")


def _info(args: argparse.Namespace) -> int:
    fmt = output_format(args)
    with connect(args).rest() as rest:
        checkpoint = _find(rest, args.path)
        weights = rest.get_weights_info_by_tinker_path(args.path).result()
    doc = to_builtins(checkpoint)
    doc.update(base_model=weights.base_model, is_lora=weights.is_lora, lora_rank=weights.lora_rank)
    if fmt == "json":
        print_json(doc)
    else:
        rows = [[k, json.dumps(v) if isinstance(v, dict | list) else v] for k, v in doc.items()]
        print_table(["Property", "Value"], rows, title=f"Checkpoint {args.path}")
    return 0


def _download(args: argparse.Namespace) -> int:
    from tinkjax.types import parse_tinker_path

    fmt = output_format(args)
    parsed = parse_tinker_path(args.path)
    parent = Path(args.download_dir) if args.download_dir else Path.cwd()
    target = parent / f"{parsed.training_run_id}_{parsed.checkpoint_id}".replace("/", "_")
    if target.exists() and not args.force:
        raise CliError(f"{str(target)!r} exists; pass --force to replace it", "usage")
    with connect(args).rest() as rest:
        _find(rest, args.path)
        dest = rest.download_checkpoint(
            args.path, target, force=args.force, progress_bar=False if fmt == "json" else None
        ).result()
    files = sorted(p for p in Path(dest).rglob("*") if p.is_file())
    doc = {
        "checkpoint_path": args.path,
        "destination": str(dest),
        "files": [str(p.relative_to(dest)) for p in files],
        "file_size_bytes": sum(p.stat().st_size for p in files),
    }
    if fmt == "json":
        print_json(doc)
    else:
        print(f"Downloaded {args.path} to {dest} ({len(files)} files, {_size(doc['file_size_bytes'])})")  # fmt: skip
    return 0


def _delete(args: argparse.Namespace) -> int:
    fmt = output_format(args)
    paths = list(dict.fromkeys(args.paths))
    if not args.yes:
        if not sys.stdin.isatty():
            raise CliError("refusing to delete without --yes (stdin is not a terminal)", "usage")
        print(f"Will delete {len(paths)} checkpoint(s) permanently:", file=sys.stderr)
        for p in paths:
            print(f"  - {p}", file=sys.stderr)
        answer = input("Delete them? [y/N] ").strip().lower()
        if answer not in ("y", "yes"):
            print("Deletion cancelled.", file=sys.stderr)
            return 0
    from tinkjax.cli._common import error_of

    deleted: list[str] = []
    failed: list[dict[str, Any]] = []
    worst = 0
    with connect(args).rest() as rest:
        for p in paths:
            try:
                _find(rest, p)
                rest.delete_checkpoint_from_tinker_path(p).result()
                deleted.append(p)
            except Exception as exc:
                err = error_of(exc)
                failed.append({"tinker_path": p, "error": err.message, "kind": err.kind})
                worst = max(worst, err.exit_code)
    if fmt == "json":
        print_json({"deleted_count": len(deleted), "deleted": deleted, "failed": failed})
    else:
        print(f"Deleted {len(deleted)} checkpoint(s)")
        for f in failed:
            print(f"  failed {f['tinker_path']}: {f['kind']}: {f['error']}", file=sys.stderr)
    return worst


def run(args: argparse.Namespace) -> int:
    """``tinkjax checkpoint``: save, or the management action."""
    action = getattr(args, "checkpoint_action", None)
    if action is None:
        return _save(args)
    return {"list": _list, "info": _info, "download": _download, "delete": _delete}[action](args)
