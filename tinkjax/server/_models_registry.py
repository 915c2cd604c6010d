"""The model registry: served presets, live training models, their runtimes, and model ids.

Records are registered by handlers (so a model id is known as soon as ``create_model`` is
answered) and read from any thread under one lock; runtimes are created and used on the worker
thread only (the JAX runtime is not thread-safe).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tinkjax.server._errors import ApiError
from tinkjax.server._scheduler import Scheduler
from tinkjax.server._store import Store, UnknownCheckpointError
from tinkjax.server._tokenizer_files import write_byte_tokenizer
from tinkjax.server._validate import check_int, check_tinker_path
from tinkjax.types import (
    GetInfoResponse,
    ModelData,
    SupportedModel,
    parse_tinker_path,
)

if TYPE_CHECKING:
    from tinkjax.models import AdapterInfo, ModelConfig, ModelRuntime

__all__ = [
    "DEFAULT_MAX_LIVE_MODELS",
    "ModelRecord",
    "ModelRegistry",
    "no_checkpoint",
    "unknown_model",
    "unknown_session",
    "warmup",
    "warmup_shapes",
]


def unknown_model(model_id: Any) -> ApiError:
    """The 404 of a model id that is unknown (or another tenant's)."""
    return ApiError(
        404,
        f"model_id: unknown model {model_id!r} (create it with create_model or "
        "load_weights from a saved checkpoint; models do not survive a server restart "
        "or the end of their session)",
        field="model_id",
    )


def unknown_session(session_id: Any) -> ApiError:
    """The 404 of a session id that is unknown (or another tenant's)."""
    return ApiError(404, f"session_id: unknown session {session_id!r}", field="session_id")


def no_checkpoint(path: Any, field: str) -> ApiError:
    """The 404 of a checkpoint path that names nothing (or another tenant's checkpoint)."""
    return ApiError(404, f"{field}: no checkpoint at {path!r}", field=field)


#: Live training models (adapters in memory, about 15 MB each at rank 64) a server holds at once.
DEFAULT_MAX_LIVE_MODELS = 128


@dataclass
class ModelRecord:
    """A training model (LoRA adapter) as the server knows it."""

    model_id: str
    base_model: str
    rank: int
    seed: int | None
    train_attn: bool
    train_mlp: bool
    train_unembed: bool
    session_id: str | None
    user_metadata: dict[str, Any] | None = None
    last_used: float = field(default_factory=time.monotonic, compare=False)
    """``time.monotonic()`` of the last request naming the model."""
    ending: bool = field(default=False, compare=False)
    """Its session ended and the job freeing it is queued."""

    @classmethod
    def from_meta(
        cls,
        model_id: str,
        meta: Mapping[str, Any],
        *,
        session_id: str | None,
        user_metadata: dict[str, Any] | None = None,
    ) -> ModelRecord:
        """The model a checkpoint's ``meta`` (see :meth:`checkpoint_meta`) describes."""
        return cls(
            model_id=model_id, base_model=str(meta["base_model"]), rank=int(meta["lora_rank"]),
            seed=meta.get("seed"), train_attn=bool(meta.get("train_attn", True)),
            train_mlp=bool(meta.get("train_mlp", True)),
            train_unembed=bool(meta.get("train_unembed", True)), session_id=session_id,
            user_metadata=user_metadata,
        )  # fmt: skip

    def checkpoint_meta(self, **extra: Any) -> dict[str, Any]:
        """The ``meta`` saved with a checkpoint of this model."""
        return {
            "base_model": self.base_model, "is_lora": True, "lora_rank": self.rank,
            "seed": self.seed, "train_attn": self.train_attn, "train_mlp": self.train_mlp,
            "train_unembed": self.train_unembed, "optimizer_config": {"type": "adamw"}, **extra,
        }  # fmt: skip

    def adapter_info(self) -> AdapterInfo:
        """The runtime's description of this adapter."""
        from tinkjax.models import AdapterInfo

        return AdapterInfo(
            rank=self.rank, seed=self.seed if self.seed is not None else 0,
            train_attn=self.train_attn, train_mlp=self.train_mlp,
            train_unembed=self.train_unembed,
        )  # fmt: skip


ServedModels = Sequence[str] | Mapping[str, "str | Path | None"]
"""What a server serves: preset names, ``"NAME=PATH"`` strings, or ``NAME -> PATH | None``."""


def served_models(
    models: ServedModels | None,
) -> tuple[tuple[str, ...] | None, dict[str, ModelConfig]]:
    """``(names served or None for every preset, NAME -> config of each Hugging Face model)``.

    Raises:
        ValueError: a malformed entry, a name given twice, an unknown preset, or a folder
            that is not a supported Hugging Face model (naming the entry).
    """
    if models is None:
        return None, {}
    from tinkjax.models import PRESETS, load_hf_config

    pairs: list[tuple[str, str | Path | None]] = []
    if isinstance(models, Mapping):
        pairs = list(models.items())
    else:
        for entry in models:
            if not isinstance(entry, str) or not entry:
                raise ValueError(f"models: expected NAME or NAME=PATH, got {entry!r}")
            name, sep, folder = entry.partition("=")
            pairs.append((name, folder if sep else None))
    names: list[str] = []
    local: dict[str, ModelConfig] = {}
    for name, path in pairs:
        if not name or name in names:
            raise ValueError(f"models: model name {name!r} is empty or given twice")
        if path is None:
            if name not in PRESETS:
                raise ValueError(
                    f"models: {name!r} is not a preset ({sorted(PRESETS)}); serve a Hugging "
                    "Face folder as NAME=PATH"
                )
        else:
            try:
                local[name] = load_hf_config(path)
            except ValueError as e:
                raise ValueError(f"models: {name}={path}: {e}") from None
        names.append(name)
    return tuple(names), local


def warmup() -> None:
    """Import the model stack on the worker thread while the server starts answering, and
    turn on JAX's persistent compilation cache (``$TINKJAX_JAX_CACHE``, default
    ``~/.cache/tinkjax/jax``; ``off`` disables it) so a restarted server does not recompile
    the programs of the shapes it has seen."""
    from tinkjax._jaxcfg import enable_compilation_cache

    enable_compilation_cache()
    import tinkjax.models  # noqa: F401


def warmup_shapes(text: str | None = None) -> list[tuple[str, int]]:
    """The warm-up shapes of ``text`` (default ``$TINKJAX_WARMUP``): comma-separated
    ``loss_fn:length`` pairs, e.g. ``cross_entropy:64,importance_sampling:256``; unset, empty
    or ``off``: none.

    Raises:
        ValueError: a malformed pair, naming it.
    """
    import os

    text = os.environ.get("TINKJAX_WARMUP", "") if text is None else text
    if text.strip().lower() in ("", "off"):
        return []
    shapes = []
    for part in text.split(","):
        loss_fn, _, length = part.strip().partition(":")
        if not loss_fn or not length.isdigit() or int(length) < 1:
            raise ValueError(
                f"TINKJAX_WARMUP: {part.strip()!r} is not loss_fn:length (e.g. cross_entropy:64)"
            )
        shapes.append((loss_fn, int(length)))
    return shapes


class ModelRegistry:
    """Served base models, live training models and one runtime per base model.

    Args:
        store: durable sessions, runs and checkpoints.
        scheduler: the model orders (an id is taken while its order exists).
        models: base models served (``None``: every preset): preset names, and Hugging Face
            models as ``"NAME=PATH"`` strings or a mapping ``NAME -> PATH`` (a local folder,
            read by :func:`tinkjax.models.load_hf_config`; ``None``: the preset ``NAME``).
        mesh: device mesh of the Hugging Face models' runtimes: a ``jax.sharding.Mesh``
            (:func:`tinkjax.models.make_mesh`), ``"auto"`` (every local device on ``fsdp``),
            a spec such as ``"data=2,fsdp=4"``, or ``None``/``"none"``: one device.
        max_live_models: the most training models held at once; creating or loading one more
            is answered 429 naming the limit (``None``: no limit).
        warmup: ``(loss_fn, sequence length)`` pairs whose training programs each runtime
            compiles ahead on a background thread (``ModelRuntime(warmup=)``); ``None``: from
            ``$TINKJAX_WARMUP`` (:func:`warmup_shapes`), off when unset.
    """

    def __init__(
        self,
        store: Store,
        scheduler: Scheduler,
        *,
        models: ServedModels | None = None,
        max_live_models: int | None = DEFAULT_MAX_LIVE_MODELS,
        warmup: Sequence[tuple[str, int]] | None = None,
        mesh: Any = "auto",
    ) -> None:
        self.warmup = tuple(warmup_shapes() if warmup is None else warmup)
        if max_live_models is not None and max_live_models < 1:
            raise ValueError(f"max_live_models: expected >= 1 or None, got {max_live_models}")
        self.store = store
        self.scheduler = scheduler
        self.max_live_models = max_live_models
        self.mesh = mesh
        names, self._local = served_models(models)
        self.allowed_models = names
        self._tokenizers: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._models: dict[str, ModelRecord] = {}
        self._runtimes: dict[str, ModelRuntime] = {}
        self._tokenizer_id: str | None = None

    # ----------------------------------------------------------------- base models

    def presets(self) -> dict[str, ModelConfig]:
        """Served base models and their configurations."""
        from tinkjax.models import PRESETS

        names = self.allowed_models if self.allowed_models is not None else tuple(PRESETS)
        return {n: PRESETS[n] for n in names if n in PRESETS} | self._local

    def tokenizer(self, base_model: str) -> Any:
        """The tokenizer of a served ``base_model`` (any thread)."""
        with self._lock:
            tok = self._tokenizers.get(base_model)
        if tok is None:
            from tinkjax.models import ByteTokenizer, HFTokenizer

            cfg = self.config(base_model)
            tok = HFTokenizer(cfg.source) if cfg.source else ByteTokenizer()
            with self._lock:
                tok = self._tokenizers.setdefault(base_model, tok)
        return tok

    def capabilities(self) -> list[SupportedModel]:
        """``get_server_capabilities`` entries."""
        return [
            SupportedModel(
                model_name=name, max_context_length=cfg.max_seq_len, trainable=True, sampleable=True
            )
            for name, cfg in self.presets().items()
        ]

    def config(self, base_model: Any, field: str = "base_model") -> ModelConfig:
        """The served ``base_model``'s configuration; 400 naming ``field`` otherwise."""
        presets = self.presets()
        if not isinstance(base_model, str) or base_model not in presets:
            raise ApiError(
                400,
                f"{field}: unknown base model {base_model!r}; this server serves {sorted(presets)}",
                field=field,
            )
        return presets[base_model]

    @staticmethod
    def check_base_model(requested: str | None, actual: str, of: str) -> None:
        """400 unless ``requested`` (when given) is ``actual``, the base model named by ``of``
        (a possessive, e.g. ``"the checkpoint's"``)."""
        if requested is not None and requested != actual:
            raise ApiError(
                400, f"base_model: {requested!r} does not match {of} {actual!r}",
                field="base_model",
            )  # fmt: skip

    def runtime(self, base_model: str) -> ModelRuntime:
        """The runtime of ``base_model`` (worker thread only; created on first use)."""
        rt = self._runtimes.get(base_model)
        if rt is None:
            from tinkjax.models import ModelRuntime

            cfg = self.config(base_model)
            rt = ModelRuntime(
                base_model, config=cfg, warmup=self.warmup,
                mesh=self._mesh() if cfg.source else None,
            )  # fmt: skip
            self._runtimes[base_model] = rt
        return rt

    def _mesh(self) -> Any:
        """The mesh of Hugging Face models: ``mesh`` as given, or with ``"auto"`` every local
        device on ``fsdp`` (none with one device). Byte presets always run on one device."""
        if self.mesh == "auto":
            import jax

            from tinkjax.models import make_mesh

            self.mesh = make_mesh() if len(jax.devices()) > 1 else None
        elif isinstance(self.mesh, str):
            from tinkjax.models import parse_mesh

            self.mesh = None if self.mesh == "none" else parse_mesh(self.mesh)
        return self.mesh

    # ----------------------------------------------------------------- training models

    def get(self, model_id: Any) -> ModelRecord:
        """The model ``model_id`` (marked as used now); 404 naming it otherwise."""
        with self._lock:
            record = self._models.get(model_id) if isinstance(model_id, str) else None
        if record is None:
            raise unknown_model(model_id)
        record.last_used = time.monotonic()
        return record

    def peek(self, model_id: str) -> ModelRecord | None:
        """The live model ``model_id`` without marking it used (an ownership check must not
        keep another tenant's model alive), or ``None``."""
        with self._lock:
            return self._models.get(model_id)

    def records(self) -> list[ModelRecord]:
        """Every live model."""
        with self._lock:
            return list(self._models.values())

    def tokenizer_id(self) -> str:
        """The ``tokenizer_id`` of the byte models: the Hugging Face folder the server writes
        under its data dir on first use (:mod:`tinkjax.server._tokenizer_files`), else
        ``tinkjax/byte``."""
        with self._lock:
            if self._tokenizer_id is None:
                from tinkjax.models import ByteTokenizer

                folder = write_byte_tokenizer(self.store.data_dir)
                self._tokenizer_id = folder or ByteTokenizer.name_or_path
            return self._tokenizer_id

    def get_info(self, model_id: Any) -> GetInfoResponse:
        """``/get_info``."""
        record = self.get(model_id)
        cfg = self.config(record.base_model)
        return GetInfoResponse(
            model_id=record.model_id,
            model_data=ModelData(
                arch=cfg.arch, model_name=record.base_model,
                # A Hugging Face model's own folder; the byte models' written one.
                tokenizer_id=cfg.source or self.tokenizer_id(),
            ),
            is_lora=True, lora_rank=record.rank, model_name=record.base_model, type="get_info",
        )  # fmt: skip

    def require_session(self, session_id: str) -> None:
        """404 unless the session exists."""
        if not self.store.sessions.has(session_id):
            raise unknown_session(session_id)

    def new_model_id(
        self, session_id: str, model_seq_id: int, digest: str
    ) -> tuple[str, str | None]:
        """``(model_id, request_id)`` of a model created in ``session_id`` as its
        ``model_seq_id``-th: ``request_id`` answers a repeat of the same creating request
        (else ``None``); a different request for an existing model is a 400."""
        self.require_session(session_id)
        check_int(model_seq_id, "model_seq_id", low=0)
        model_id = f"{session_id}:train:{model_seq_id}"
        existing = self.scheduler.lookup(model_id, 0, digest)
        if existing is None and (
            self.scheduler.known_model(model_id) or self.store.runs.has(model_id)
        ):
            raise ApiError(
                400, f"model_seq_id: model {model_id!r} already exists", field="model_seq_id"
            )
        return model_id, existing

    def register(self, record: ModelRecord) -> None:
        """Make ``record`` visible to requests; 429 when ``max_live_models`` are held."""
        with self._lock:
            limit = self.max_live_models
            if (
                limit is not None
                and record.model_id not in self._models
                and len(self._models) >= limit
            ):
                raise ApiError(
                    429,
                    f"max_live_models: this server holds {len(self._models)} live training "
                    f"models, its limit is {limit}; unload a model (unload_model) or end its "
                    "session (saved checkpoints stay loadable), or start the server with a "
                    "higher --max-live-models",
                    field="max_live_models",
                )
            self._models[record.model_id] = record

    def discard(self, model_id: str) -> None:
        """Forget a model that was never created (its creating request was refused)."""
        with self._lock:
            self._models.pop(model_id, None)

    def unregister(self, model_id: str) -> None:
        """Forget a model and its order (its waiting requests fail)."""
        self.discard(model_id)
        self.scheduler.forget_model(model_id)

    def ensure_run(self, record: ModelRecord) -> None:
        """Record the model's training run unless it exists (worker thread)."""
        if not self.store.runs.has(record.model_id):
            meta = record.user_metadata
            self.store.runs.add(
                record.model_id, base_model=record.base_model, is_lora=True,
                lora_rank=record.rank, session_id=record.session_id,
                user_metadata=None if meta is None else {k: str(v) for k, v in meta.items()},
            )  # fmt: skip

    # ----------------------------------------------------------------- checkpoints

    def checkpoint(self, path: Any, field: str = "path") -> tuple[Path, dict[str, Any], str]:
        """``(folder, meta, kind)`` of a saved checkpoint; 400 for a malformed path, 404 for
        an unknown one."""
        check_tinker_path(path, field)
        kind = parse_tinker_path(path).kind
        if kind == "external_weights":
            raise ApiError(
                400,
                f"{field}: {path!r} is an external_weights checkpoint, which is only downloaded "
                "(get_external_weights_urls); load a weights/ or sampler_weights/ checkpoint",
                field=field,
            )
        try:
            folder, meta = self.store.checkpoints.folder(path)
        except UnknownCheckpointError:
            raise no_checkpoint(path, field) from None
        return folder, meta, kind
