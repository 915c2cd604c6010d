"""The local Tinker-compatible backend: an ASGI server over JAX byte-level models."""

from tinkjax.server._auth import load_api_keys, tenant_id
from tinkjax.server._faults import FaultConfig, FaultRule
from tinkjax.server._launch import ServerHandle, start

__all__ = ["FaultConfig", "FaultRule", "ServerHandle", "load_api_keys", "start", "tenant_id"]
