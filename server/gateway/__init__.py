"""HTTP gateway in front of Triton: ``python -m server.gateway`` (see docs/gateway.md)."""

from server.gateway.app import create_app
from server.gateway.config import Settings, load_settings

__all__ = ["Settings", "create_app", "load_settings"]
