"""A canned in-memory Tinker service for ``httpx.MockTransport`` (no sockets, no models).

It speaks the wire protocol of §3 closely enough for the client, records every request, counts
how many times each ``(model_id, seq_id)`` was applied, and injects faults: the server's own
:class:`~tinkjax.server.FaultRule` rules, applied to the mock transport (a dropped connection is
a ``ConnectError``, a hang a ``ReadTimeout``).
"""

from __future__ import annotations

import io
import json
import re
import tarfile
import threading
from collections import Counter
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np

from tinkjax.codec import (
    decode_forward_backward_request,
    encode_forward_backward_output,
    encode_sample_response,
)
from tinkjax.server import FaultConfig, FaultRule
from tinkjax.types import (
    ForwardBackwardOutput,
    ForwardRequest,
    SampledSequence,
    SampleResponse,
    TensorData,
)


@dataclass
class Future:
    result: bytes
    content_type: str
    pending: int = 0  # polls answered try_again before the result


class FakeTinker:
    """The fake service; ``transport()`` gives an ``httpx.MockTransport`` over it."""

    def __init__(self, *, config: dict[str, Any] | None = None, pending_polls: int = 0) -> None:
        self.config = config or {}
        self.pending_polls = pending_polls
        self.faults = FaultConfig()
        self.requests: list[httpx.Request] = []
        self.applied: Counter[tuple[str, int]] = Counter()
        self.seen: dict[tuple[str, int], str] = {}
        self.futures: dict[str, Future] = {}
        self.sample_keys: list[str | None] = []
        self.fwdbwd_seq: list[int] = []
        self.finished: list[dict[str, Any]] = []
        self.heartbeats = 0
        self.checkpoints: list[dict[str, Any]] = []
        self.archives: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self._n = 0

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def fault(self, path: str, **kw: Any) -> FaultRule:
        """Add a :class:`FaultRule` (``times`` defaults to 1 here) and return it."""
        kw.setdefault("times", 1)
        rule = FaultRule(path, **kw)
        self.faults.rules.append(rule)
        return rule

    # ----------------------------------------------------------------- plumbing
    def _future(self, result: Any, *, proto: bytes | None = None) -> dict[str, Any]:
        with self._lock:
            self._n += 1
            rid = f"req-{self._n}"
        if proto is not None:
            self.futures[rid] = Future(proto, "application/x-protobuf", self.pending_polls)
        else:
            self.futures[rid] = Future(
                json.dumps(result).encode(), "application/json", self.pending_polls
            )
        return {"request_id": rid}

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        rule = self.faults.take(request.method, request.url.path, request.headers.get("x-api-key"))
        if rule is None or (rule.status is None and not (rule.drop or rule.hang or rule.malformed)):
            return self.route(request)
        if rule.drop:
            raise httpx.ConnectError("connection reset by peer", request=request)
        if rule.hang:
            raise httpx.ReadTimeout("read timed out", request=request)
        if rule.malformed:
            return httpx.Response(
                200,
                content=b'{"request_id": ',
                request=request,
                headers={"content-type": "application/json"},
            )
        if rule.after:
            self.route(request)  # applied; the answer is the fault's
        status, body, headers = rule.answer(request.url.path)
        return httpx.Response(status, content=body, headers=headers, request=request)

    def route(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        method = request.method
        body: Any = None
        if request.content and request.headers.get("content-type") == "application/json":
            body = json.loads(request.content)
        handler = _ROUTES_EXACT.get((method, path))
        if handler is not None:
            out = handler(self, request, body)
        else:
            for (m, pattern), fn in _ROUTES_RE:
                if m == method and (match := re.fullmatch(pattern, path)):
                    out = fn(self, request, body, *match.groups())
                    break
            else:
                return httpx.Response(404, json={"detail": f"no route {method} {path}"})
        if isinstance(out, httpx.Response):
            return out
        return httpx.Response(200, json=out)

    # ----------------------------------------------------------------- endpoints
    def client_config(self, req: httpx.Request, body: Any) -> Any:
        return self.config

    def create_session(self, req: httpx.Request, body: Any) -> Any:
        self.session_request = body
        return {"session_id": "sess-1", "info_message": "welcome"}

    def heartbeat(self, req: httpx.Request, body: Any) -> Any:
        self.heartbeats += 1
        return {}

    def finish(self, req: httpx.Request, body: Any, sid: str) -> Any:
        self.finished.append({"session_id": sid, **body})
        return {}

    def create_model(self, req: httpx.Request, body: Any) -> Any:
        model_id = f"{body['session_id']}:train:{body['model_seq_id']}"
        return {**self._future({"model_id": model_id}), "model_id": model_id}

    def load_weights(self, req: httpx.Request, body: Any) -> Any:
        if "model_id" in body:
            self._apply(body["model_id"], body["seq_id"])
            return self._future({"path": body["path"], "model_id": body["model_id"]})
        model_id = f"{body['session_id']}:train:{body['model_seq_id']}"
        return self._future({"path": body["path"], "model_id": model_id})

    def get_info(self, req: httpx.Request, body: Any) -> Any:
        return {
            "model_id": body["model_id"],
            "model_data": {"model_name": "tinkjax/bytelm-micro", "arch": "bytelm"},
            "is_lora": True,
            "lora_rank": 8,
        }

    def _apply(self, model_id: str, seq_id: int) -> bool:
        """Record an execution; False when ``(model_id, seq_id)`` was already applied."""
        with self._lock:
            key = (model_id, seq_id)
            if key in self.seen:
                return False
            self.seen[key] = "x"
            self.applied[key] += 1
            return True

    def forward_backward(self, req: httpx.Request, body: Any) -> Any:
        if req.headers.get("content-type") == "application/x-protobuf":
            parsed = decode_forward_backward_request(req.content)
        else:
            return httpx.Response(415, json={"detail": "json fwdbwd not supported here"})
        self._apply(parsed.model_id, parsed.seq_id or 0)
        self.fwdbwd_seq.append(parsed.seq_id or 0)
        data = (
            parsed.forward_input
            if isinstance(parsed, ForwardRequest)
            else parsed.forward_backward_input
        ).data
        outputs = []
        for d in data:
            n = d.model_input.length
            outputs.append({"logprobs": TensorData.from_numpy(np.full(n, -1.0, np.float32))})
        out = ForwardBackwardOutput(
            loss_fn_output_type="ArrayRecord",
            loss_fn_outputs=outputs,
            metrics={
                "loss:sum": float(sum(d.model_input.length for d in data)),
                "seq:max": float(parsed.seq_id or 0),
                "n:mean": float(len(data)),
            },
        )
        return self._future(None, proto=encode_forward_backward_output(out))

    def ordered(self, req: httpx.Request, body: Any) -> Any:
        self._apply(body["model_id"], body["seq_id"])
        kind = req.url.path.rsplit("/", 1)[1]
        if kind == "optim_step":
            return self._future({"metrics": {"lr": body["adam_params"]["learning_rate"]}})
        if kind == "save_weights":
            path = f"tinker://{body['model_id']}/weights/{body['path']}"
            self.checkpoints.append(
                {
                    "checkpoint_id": f"weights/{body['path']}",
                    "checkpoint_type": "training",
                    "time": "2026-01-01T00:00:00Z",
                    "tinker_path": path,
                }
            )
            return self._future({"path": path})
        if body.get("path") is not None:
            return self._future(
                {"path": f"tinker://{body['model_id']}/sampler_weights/{body['path']}"}
            )
        return self._future(
            {"sampling_session_id": f"sess-1:sample:{body['sampling_session_seq_id']}"}
        )

    def create_sampling_session(self, req: httpx.Request, body: Any) -> Any:
        return {
            "sampling_session_id": f"{body['session_id']}:sample:{body['sampling_session_seq_id']}"
        }

    def asample(self, req: httpx.Request, body: Any) -> Any:
        self.sample_keys.append(req.headers.get("x-api-key"))
        n = body["num_samples"]
        prompt = [t for c in body["prompt"]["chunks"] for t in c["tokens"]]
        seqs = [
            SampledSequence(
                stop_reason="length",
                tokens_np=np.array([1, 2, 3], np.int32),
                logprobs_np=np.full(3, -0.5, np.float32),
            )
            for _ in range(n)
        ]
        plp = None
        if body.get("prompt_logprobs"):
            plp = np.array([np.nan] + [-1.0] * (len(prompt) - 1), np.float32)
        resp = SampleResponse(sequences=seqs, prompt_logprobs_np=plp)
        fut = self._future(None, proto=encode_sample_response(resp))
        return {**fut, "sample_sequence_ids": [f"{fut['request_id']}:{i}" for i in range(n)]}

    def retrieve_future(self, req: httpx.Request, body: Any) -> Any:
        fut = self.futures.get(body["request_id"])
        if fut is None:
            return httpx.Response(404, json={"detail": "unknown request id"})
        if fut.pending > 0:
            fut.pending -= 1
            return httpx.Response(
                408,
                json={
                    "type": "try_again",
                    "request_id": body["request_id"],
                    "queue_state": "paused_capacity",
                },
            )
        if fut.content_type == "application/x-protobuf" and "x-protobuf" not in req.headers.get(
            "accept", ""
        ):
            return httpx.Response(400, json={"detail": "protobuf result needs Accept"})
        return httpx.Response(200, content=fut.result, headers={"content-type": fut.content_type})

    def capabilities(self, req: httpx.Request, body: Any) -> Any:
        return {"supported_models": [{"model_name": "tinkjax/bytelm-micro"}]}

    def training_runs(self, req: httpx.Request, body: Any) -> Any:
        limit = int(req.url.params.get("limit", 20))
        offset = int(req.url.params.get("offset", 0))
        runs = [
            {
                "training_run_id": f"sess-1:train:{i}",
                "base_model": "tinkjax/bytelm-micro",
                "model_owner": "me",
                "is_lora": True,
                "last_request_time": "2026-01-01T00:00:00Z",
            }
            for i in range(7)
        ]
        return {
            "training_runs": runs[offset : offset + limit],
            "cursor": {"offset": offset, "limit": limit, "total_count": len(runs)},
        }

    def training_run(self, req: httpx.Request, body: Any, run_id: str) -> Any:
        return {
            "training_run_id": run_id,
            "base_model": "tinkjax/bytelm-micro",
            "model_owner": "me",
            "is_lora": True,
            "lora_rank": 8,
            "last_request_time": "2026-01-01T00:00:00Z",
        }

    def list_checkpoints(self, req: httpx.Request, body: Any, run_id: str) -> Any:
        return {
            "checkpoints": [
                c for c in self.checkpoints if c["tinker_path"].startswith(f"tinker://{run_id}/")
            ]
        }

    def user_checkpoints(self, req: httpx.Request, body: Any) -> Any:
        limit = int(req.url.params.get("limit", 100))
        offset = int(req.url.params.get("offset", 0))
        return {
            "checkpoints": self.checkpoints[offset : offset + limit],
            "cursor": {"offset": offset, "limit": limit, "total_count": len(self.checkpoints)},
        }

    def delete_checkpoint(self, req: httpx.Request, body: Any, run_id: str, ckpt: str) -> Any:
        self.checkpoints = [
            c for c in self.checkpoints if c["tinker_path"] != f"tinker://{run_id}/{ckpt}"
        ]
        return {}

    def archive(self, req: httpx.Request, body: Any, run_id: str, ckpt: str) -> Any:
        key = f"{run_id}/{ckpt}"
        if key not in self.archives:
            return httpx.Response(404, json={"detail": "no archive"})
        return httpx.Response(302, headers={"location": f"/files/{key}.tar.gz"})

    def files(self, req: httpx.Request, body: Any, key: str) -> Any:
        data = self.archives[key]
        return httpx.Response(200, content=data, headers={"content-length": str(len(data))})

    def weights_info(self, req: httpx.Request, body: Any) -> Any:
        return {"base_model": "tinkjax/bytelm-micro", "is_lora": True, "lora_rank": 8}

    def sessions(self, req: httpx.Request, body: Any) -> Any:
        limit = int(req.url.params.get("limit", 20))
        offset = int(req.url.params.get("offset", 0))
        return {"sessions": [f"s{i}" for i in range(5)][offset : offset + limit]}

    def sampler(self, req: httpx.Request, body: Any, sid: str) -> Any:
        return {"sampler_id": sid, "base_model": "tinkjax/bytelm-micro"}


_ROUTES_EXACT = {
    ("POST", "/api/v1/client/config"): FakeTinker.client_config,
    ("POST", "/api/v1/create_session"): FakeTinker.create_session,
    ("POST", "/api/v1/session_heartbeat"): FakeTinker.heartbeat,
    ("POST", "/api/v1/create_model"): FakeTinker.create_model,
    ("POST", "/api/v1/load_weights"): FakeTinker.load_weights,
    ("POST", "/api/v1/get_info"): FakeTinker.get_info,
    ("POST", "/api/v1/forward_backward"): FakeTinker.forward_backward,
    ("POST", "/api/v1/optim_step"): FakeTinker.ordered,
    ("POST", "/api/v1/save_weights"): FakeTinker.ordered,
    ("POST", "/api/v1/save_weights_for_sampler"): FakeTinker.ordered,
    ("POST", "/api/v1/create_sampling_session"): FakeTinker.create_sampling_session,
    ("POST", "/api/v1/asample"): FakeTinker.asample,
    ("POST", "/api/v1/retrieve_future"): FakeTinker.retrieve_future,
    ("GET", "/api/v1/get_server_capabilities"): FakeTinker.capabilities,
    ("GET", "/api/v1/training_runs"): FakeTinker.training_runs,
    ("GET", "/api/v1/checkpoints"): FakeTinker.user_checkpoints,
    ("POST", "/api/v1/weights_info"): FakeTinker.weights_info,
    ("GET", "/api/v1/sessions"): FakeTinker.sessions,
}
_ROUTES_RE = [
    (("POST", r"/api/v1/sessions/([^/]+)/finish"), FakeTinker.finish),
    (("GET", r"/api/v1/training_runs/([^/]+)/checkpoints"), FakeTinker.list_checkpoints),
    (("GET", r"/api/v1/training_runs/([^/]+)/checkpoints/(.+)/archive"), FakeTinker.archive),
    (("DELETE", r"/api/v1/training_runs/([^/]+)/checkpoints/(.+)"), FakeTinker.delete_checkpoint),
    (("GET", r"/api/v1/training_runs/([^/]+)"), FakeTinker.training_run),
    (("GET", r"/api/v1/samplers/(.+)"), FakeTinker.sampler),
    (("GET", r"/files/(.+)\.tar\.gz"), FakeTinker.files),
]


def make_tar(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    """A tar.gz holding ``members`` (``TarInfo`` + data for regular files)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return buf.getvalue()


def file_member(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def link_member(name: str, target: str, *, hard: bool = False) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.LNKTYPE if hard else tarfile.SYMTYPE
    info.linkname = target
    return info, None
