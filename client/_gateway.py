"""The gateway transport (http:// URLs), sync and async: the same requests (client/_http.py) over httpx's Client or
AsyncClient, its errors as ClientErrors."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import httpx

from client import _http
from client._core import Encoded
from client.errors import ClientError
from client.results import Classification, PipelineInfo

T = TypeVar("T")


def _limits(max_connections: int) -> httpx.Limits:
    return httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)


class GatewayTransport:
    """One httpx.Client; the gateway does the batching, so a batch is one request, retried as a whole."""

    def __init__(self, url: str, api_key: str | None, timeout: float, max_connections: int) -> None:
        self._http = httpx.Client(base_url=url, timeout=timeout, headers=_http.auth_headers(api_key),
                                  limits=_limits(max_connections))

    def classify(self, data: bytes, kind: str, top_k: int, pipeline: str | None, maps: bool) -> Classification:
        return _http.parse_classification(self._send(self._http.post, **_http.classify_request(
            data, kind, top_k, pipeline, maps)))

    def classify_batch(self, images: list[Encoded], top_k: int, pipeline: str | None,
                       retrying: Callable[[Callable[[], T]], T]) -> list[Classification | ClientError]:
        request = _http.batch_request(images, top_k, pipeline)
        return retrying(lambda: _http.parse_batch(self._send(self._http.post, **request)))

    def pipelines(self) -> list[PipelineInfo]:
        return _http.parse_pipelines(self._send(self._http.get, url="/v1/pipelines"))

    def shadow_report(self, pipeline: str) -> dict[str, Any]:
        return self._send(self._http.get, url=_http.shadow_url(pipeline))

    def rollout(self, pipeline: str, action: str, admin_key: str) -> dict[str, Any]:
        return self._send(self._http.post, **_http.rollout_request(pipeline, action, admin_key))

    def ready(self) -> bool:
        self._send(self._http.get, url="/readyz")
        return True

    @staticmethod
    def _send(method: Callable[..., httpx.Response], **request: Any) -> Any:
        with _http.translated_errors():
            response = method(**request)
        return _http.check(response)

    def close(self) -> None:
        self._http.close()


class AsyncGatewayTransport:
    """The async twin over one httpx.AsyncClient."""

    def __init__(self, url: str, api_key: str | None, timeout: float, max_connections: int) -> None:
        self._http = httpx.AsyncClient(base_url=url, timeout=timeout, headers=_http.auth_headers(api_key),
                                       limits=_limits(max_connections))

    async def classify(self, data: bytes, kind: str, top_k: int, pipeline: str | None,
                       maps: bool) -> Classification:
        return _http.parse_classification(await self._send(self._http.post, **_http.classify_request(
            data, kind, top_k, pipeline, maps)))

    async def classify_batch(self, images: list[Encoded], top_k: int, pipeline: str | None,
                             retrying: Callable[[Callable[[], Awaitable[T]]], Awaitable[T]],
                             ) -> list[Classification | ClientError]:
        request = _http.batch_request(images, top_k, pipeline)

        async def call() -> list[Classification | ClientError]:
            return _http.parse_batch(await self._send(self._http.post, **request))
        return await retrying(call)

    async def pipelines(self) -> list[PipelineInfo]:
        return _http.parse_pipelines(await self._send(self._http.get, url="/v1/pipelines"))

    async def shadow_report(self, pipeline: str) -> dict[str, Any]:
        return await self._send(self._http.get, url=_http.shadow_url(pipeline))

    async def rollout(self, pipeline: str, action: str, admin_key: str) -> dict[str, Any]:
        return await self._send(self._http.post, **_http.rollout_request(pipeline, action, admin_key))

    async def ready(self) -> bool:
        await self._send(self._http.get, url="/readyz")
        return True

    @staticmethod
    async def _send(method: Callable[..., Awaitable[httpx.Response]], **request: Any) -> Any:
        with _http.translated_errors():
            response = await method(**request)
        return _http.check(response)

    async def close(self) -> None:
        await self._http.aclose()
