"""What Client and AsyncClient share, with no network I/O: argument checks, the transport for a URL, a batch split into
what is sent and what failed before sending, and a file's read error as its score result.

The twins differ only where I/O happens (threads and time.sleep, or tasks and asyncio.sleep), as httpx's Client and
AsyncClient do; what is sent over the wire is the transport's business (gateway HTTP or Triton gRPC).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from client.errors import ClientError
from client.images import ImageInput, encode_or_error
from client.results import Classification, ScoreResult

DEFAULT_URL = "http://127.0.0.1:8080"
DIRECT_SCHEMES = ("grpc://", "triton://")  # Triton's gRPC port; anything else is the gateway
T = TypeVar("T")

Encoded = tuple[bytes, str, str | None]  # (data, content type, file name)


def is_direct(url: str) -> bool:
    return url.startswith(DIRECT_SCHEMES)


def split_batch(images: Sequence[ImageInput]) -> tuple[list[Encoded | ClientError], list[Encoded]]:
    """Every image encoded, or its ClientError (unreadable, not an image); and the ones to send."""
    parts = [encode_or_error(image) for image in images]
    return parts, [part for part in parts if not isinstance(part, ClientError)]


def join_batch(parts: list[Encoded | ClientError],
               answers: list[Classification | ClientError]) -> list[Classification | ClientError]:
    """The answers put back in the images' order, around the images that failed before sending."""
    sent = iter(answers)
    return [part if isinstance(part, ClientError) else next(sent) for part in parts]


def read_error(path: str, exc: OSError) -> ScoreResult:
    return ScoreResult(path, error=ClientError(0, "read_error", f"{exc.strerror or exc}"))


def read_file(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()
