"""Python SDK for vgg-serve: ``from client import Client``.

    with Client("http://127.0.0.1:8080") as c:
        print(c.classify("photo.jpg", top_k=5).top)
        for result in c.score("photos/", concurrency=8):
            ...

``Client("grpc://127.0.0.1:8001")`` talks to Triton directly (needs the ``triton`` extra). See docs/client.md.
"""

from client.async_client import AsyncClient
from client.errors import ClientError
from client.results import Classification, PipelineInfo, Prediction, ScoreResult
from client.retry import RetryPolicy
from client.sync_client import Client

__all__ = ["AsyncClient", "Classification", "Client", "ClientError", "PipelineInfo", "Prediction", "RetryPolicy",
           "ScoreResult"]
__version__ = "0.1.0"
