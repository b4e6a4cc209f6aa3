"""HTTP gateway in front of Triton: ``python -m server.gateway`` (see docs/gateway.md)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

# Imported on first use: `server.serve` reads the gateway's settings without loading FastAPI into its process.
_EXPORTS = {"create_app": "server.gateway.app", "Settings": "server.gateway.config",
            "load_settings": "server.gateway.config"}

if TYPE_CHECKING:
    from server.gateway.app import create_app
    from server.gateway.config import Settings, load_settings

__all__ = ["Settings", "create_app", "load_settings"]


def __getattr__(name: str) -> object:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'server.gateway' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
