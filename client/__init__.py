"""Python SDK for vgg-serve: ``from client import Client``.

    with Client("http://127.0.0.1:8080") as c:
        print(c.classify("photo.jpg", top_k=5).top)
        for result in c.score("photos/", concurrency=8):
            ...

``Client("grpc://127.0.0.1:8001")`` talks to Triton directly (needs the ``triton`` extra). See docs/client.md.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

# Imported on first use, so `import client.contract` (inside every Triton stub) does not load httpx and the SDK.
_EXPORTS = {"AsyncClient": "client.async_client", "ClientError": "client.errors", "Classification": "client.results",
            "PipelineInfo": "client.results", "Prediction": "client.results", "ScoreResult": "client.results",
            "RetryPolicy": "client.retry", "Client": "client.sync_client"}

if TYPE_CHECKING:
    from client.async_client import AsyncClient
    from client.errors import ClientError
    from client.results import Classification, PipelineInfo, Prediction, ScoreResult
    from client.retry import RetryPolicy
    from client.sync_client import Client

__all__ = ["AsyncClient", "Classification", "Client", "ClientError", "PipelineInfo", "Prediction", "RetryPolicy",
           "ScoreResult"]
__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'client' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
