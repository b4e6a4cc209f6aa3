"""The asyncio twin of Client: same methods, awaitable; ``score`` is an async iterator."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Container
from typing import Any, TypeVar

from client._core import DEFAULT_URL, is_direct, join_batch, read_error, read_file, split_batch
from client._gateway import AsyncGatewayTransport
from client.errors import ClientError
from client.images import ImageInput, encode
from client.inputs import Inputs, check_options, check_timeout, iter_paths
from client.results import Classification, PipelineInfo, ScoreResult
from client.retry import RetryPolicy

T = TypeVar("T")


class AsyncClient:
    """Talks to the gateway (``http://...``) or straight to Triton's gRPC port (``grpc://host:port``)."""

    def __init__(self, url: str = DEFAULT_URL, api_key: str | None = None, timeout: float = 60.0,
                 retry: RetryPolicy | None = None, max_connections: int = 64,
                 triton_key: str | None = None) -> None:
        self.url = url
        self.retry = retry or RetryPolicy()
        check_timeout(timeout)
        if is_direct(url):
            from client._direct import AsyncDirectTransport, read_triton_key
            self._transport: AsyncGatewayTransport | AsyncDirectTransport = AsyncDirectTransport(
                url, timeout, read_triton_key(triton_key))
        else:
            self._transport = AsyncGatewayTransport(url, api_key, timeout, max_connections)

    async def classify(self, image: ImageInput, top_k: int = 5, pipeline: str | None = None,
                       maps: bool = False) -> Classification:
        check_options(top_k)
        data, kind, _ = encode(image)
        return await self._retrying(lambda: self._transport.classify(data, kind, top_k, pipeline, maps))

    async def classify_batch(self, images: list[ImageInput], top_k: int = 5,
                             pipeline: str | None = None) -> list[Classification | ClientError]:
        check_options(top_k)
        parts, sent = split_batch(images)
        answers = await self._transport.classify_batch(sent, top_k, pipeline, self._retrying) if sent else []
        return join_batch(parts, answers)

    async def pipelines(self) -> list[PipelineInfo]:
        return await self._retrying(self._transport.pipelines)

    async def shadow_report(self, pipeline: str) -> dict[str, Any]:
        """The async twin of Client.shadow_report."""
        return await self._transport.shadow_report(pipeline)

    async def rollout(self, pipeline: str, action: str, admin_key: str) -> dict[str, Any]:
        """The async twin of Client.rollout."""
        return await self._transport.rollout(pipeline, action, admin_key)

    async def ready(self) -> bool:
        try:
            return await self._transport.ready()
        except ClientError:
            return False

    def score(self, inputs: Inputs, concurrency: int = 8, top_k: int = 5, pipeline: str | None = None,
              skip: Container[str] = ()) -> AsyncIterator[ScoreResult]:
        """Like Client.score: results as they complete, at most ``concurrency`` requests in flight."""
        check_options(top_k, concurrency)  # now, not at the first iteration
        return self._score(inputs, concurrency, top_k, pipeline, skip)

    async def _score(self, inputs: Inputs, concurrency: int, top_k: int, pipeline: str | None,
                     skip: Container[str]) -> AsyncIterator[ScoreResult]:
        pending: set[asyncio.Task[ScoreResult]] = set()
        try:
            for path in iter_paths(inputs):
                if path in skip:
                    continue
                pending.add(asyncio.create_task(self._score_one(path, top_k, pipeline)))
                if len(pending) >= concurrency:
                    done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                    for task in done:
                        yield task.result()
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    yield task.result()
        finally:
            for task in pending:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*pending, return_exceptions=True)

    async def _score_one(self, path: str, top_k: int, pipeline: str | None) -> ScoreResult:
        try:
            data = await asyncio.to_thread(read_file, path)
        except OSError as exc:
            return read_error(path, exc)
        try:
            return ScoreResult(path, classification=await self.classify(data, top_k, pipeline))
        except ClientError as exc:
            return ScoreResult(path, error=exc)

    async def _retrying(self, call: Callable[[], Awaitable[T]]) -> T:
        attempt = 0
        while True:
            try:
                return await call()
            except ClientError as error:
                delay = self.retry.delay(attempt, error)
                if delay is None:
                    raise
            await asyncio.sleep(delay)
            attempt += 1

    async def aclose(self) -> None:
        await self._transport.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
