"""The asyncio twin of Client: same methods, awaitable; ``score`` is an async iterator."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Container
from typing import Any, TypeVar

import httpx

from client import _http
from client._direct import IMAGE_ERROR_CODES, SCHEMES, AsyncDirectTransport, read_triton_key
from client.errors import ClientError
from client.images import ImageInput, encode, encode_or_error
from client.inputs import Inputs, check_options, check_timeout, iter_paths
from client.results import Classification, PipelineInfo, ScoreResult
from client.retry import RetryPolicy
from client.sync_client import DEFAULT_URL

T = TypeVar("T")


class AsyncClient:
    """Talks to the gateway (``http://...``) or straight to Triton's gRPC port (``grpc://host:port``)."""

    def __init__(self, url: str = DEFAULT_URL, api_key: str | None = None, timeout: float = 60.0,
                 retry: RetryPolicy | None = None, max_connections: int = 64,
                 triton_key: str | None = None) -> None:
        self.url = url
        self.retry = retry or RetryPolicy()
        check_timeout(timeout)
        self._direct: AsyncDirectTransport | None = None
        self._http: httpx.AsyncClient | None = None
        if url.startswith(SCHEMES):
            self._direct = AsyncDirectTransport(url, timeout, read_triton_key(triton_key))
        else:
            limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
            self._http = httpx.AsyncClient(base_url=url, timeout=timeout, headers=_http.auth_headers(api_key),
                                           limits=limits)

    async def classify(self, image: ImageInput, top_k: int = 5, pipeline: str | None = None,
                       maps: bool = False) -> Classification:
        check_options(top_k)
        data, kind, _ = encode(image)
        if self._direct and maps:
            raise _http.maps_unsupported()
        if self._direct:
            direct = self._direct
            return await self._retrying(lambda: direct.classify(data, top_k, pipeline))
        request = _http.classify_request(data, kind, top_k, pipeline, maps)

        async def call() -> Classification:
            return _http.parse_classification(await self._post(request))
        return await self._retrying(call)

    async def classify_batch(self, images: list[ImageInput], top_k: int = 5,
                             pipeline: str | None = None) -> list[Classification | ClientError]:
        check_options(top_k)
        parts = [encode_or_error(image) for image in images]
        sent = [part for part in parts if not isinstance(part, ClientError)]
        results: list[Classification | ClientError] = []
        if sent and self._direct:
            results = list(await asyncio.gather(*(self._safe(self.classify(d, top_k, pipeline)) for d, _, _ in sent)))
        elif sent:
            request = _http.batch_request(sent, top_k, pipeline)

            async def call() -> list[Classification | ClientError]:
                return _http.parse_batch(await self._post(request))
            results = await self._retrying(call)
        answers = iter(results)
        return [part if isinstance(part, ClientError) else next(answers) for part in parts]

    async def pipelines(self) -> list[PipelineInfo]:
        if self._direct:
            return list((await self._retrying(self._direct.pipelines)).values())

        async def call() -> list[PipelineInfo]:
            return _http.parse_pipelines(await self._get("/v1/pipelines"))
        return await self._retrying(call)

    async def ready(self) -> bool:
        try:
            if self._direct:
                return await self._direct.ready()
            await self._get("/readyz")
        except ClientError:
            return False
        return True

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
            data = await asyncio.to_thread(_read, path)
        except OSError as exc:
            return ScoreResult(path, error=ClientError(0, "read_error", f"{exc.strerror or exc}"))
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

    @staticmethod
    async def _safe(call: Awaitable[Classification]) -> Classification | ClientError:
        try:
            return await call
        except ClientError as exc:
            if exc.code not in IMAGE_ERROR_CODES:
                raise
            return exc

    async def _post(self, request: dict[str, Any]) -> Any:
        assert self._http is not None
        return await self._send(self._http.post(**request))

    async def _get(self, path: str) -> Any:
        assert self._http is not None
        return await self._send(self._http.get(path))

    @staticmethod
    async def _send(call: Awaitable[httpx.Response]) -> Any:
        try:
            response = await call
        except _http.TRANSPORT_ERRORS as exc:
            raise _http.transport_error(exc) from None
        except httpx.TimeoutException as exc:
            raise _http.timeout_error(exc) from None
        return _http.check(response)

    async def aclose(self) -> None:
        if self._http:
            await self._http.aclose()
        if self._direct:
            await self._direct.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


def _read(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()
