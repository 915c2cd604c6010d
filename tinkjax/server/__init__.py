"""The local Tinker-compatible backend: an ASGI server over JAX byte-level models."""

from tinkjax.server._faults import FaultConfig, FaultRule
from tinkjax.server._launch import ServerHandle, start

__all__ = ["FaultConfig", "FaultRule", "ServerHandle", "start"]
