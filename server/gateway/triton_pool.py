"""A pool of Triton gRPC endpoints: spreads calls over the healthy ones and fails over when one dies.

Inference is a pure function of the image, so a call that an endpoint did not complete (connection refused or
reset, server stopping) is retried on the next endpoint; timeouts are not retried, they would only double the wait.
A background probe marks endpoints up and down so requests skip a dead replica instead of paying its timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import grpc
import tritonclient.grpc.aio as grpcclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from server.gateway.errors import RETRYABLE_STATUSES, TritonUnavailable

log = logging.getLogger("server.gateway")
T = TypeVar("T")
MAX_MESSAGE = 2**31 - 1
# Fast reconnects: grpc's default backoff grows to minutes, which would keep a restarted replica out of rotation.
CHANNEL_ARGS = [
    ("grpc.max_send_message_length", MAX_MESSAGE),
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
    ("grpc.keepalive_time_ms", 30000),
    ("grpc.keepalive_timeout_ms", 10000),
    ("grpc.enable_retries", 0),
]


@dataclass
class Endpoint:
    """One Triton server and what the gateway believes about it."""

    url: str
    client: grpcclient.InferenceServerClient
    # Inference goes through the generated stub on a channel of its own, with prebuilt protobuf requests
    # (see classifier.py); tritonclient's client serves probes and metadata.
    channel: grpc.aio.Channel | None = field(default=None, repr=False)
    stub: service_pb2_grpc.GRPCInferenceServiceStub | None = field(default=None, repr=False)
    healthy: bool = True
    inflight: int = 0
    failures: int = 0
    last_error: str = ""
    on_state: Callable[[Endpoint], None] | None = field(default=None, repr=False)

    def mark(self, healthy: bool, reason: str = "") -> None:
        if healthy != self.healthy:
            log.warning("Triton %s is now %s%s", self.url, "up" if healthy else "down", f": {reason}" if reason else "")
        self.healthy = healthy
        if not healthy:
            self.failures += 1
            self.last_error = reason
        if self.on_state:
            self.on_state(self)


def status_name(exc: InferenceServerException) -> str:
    """'unavailable', 'deadline_exceeded', ...: a bounded label for metrics."""
    return (exc.status() or "StatusCode.UNKNOWN").removeprefix("StatusCode.").lower()


def is_retryable(exc: InferenceServerException) -> bool:
    status = exc.status() or ""
    message = (exc.message() or "").lower()
    return status in RETRYABLE_STATUSES or (status == "StatusCode.UNKNOWN" and "socket closed" in message)


class TritonPool:
    """Round-robin over healthy endpoints, every endpoint tried at most once per call."""

    def __init__(self, urls: Sequence[str], probe_timeout_s: float = 1.0,
                 on_error: Callable[[str, str], None] | None = None,
                 on_state: Callable[[Endpoint], None] | None = None) -> None:
        self.urls = list(urls)
        self.probe_timeout_s = probe_timeout_s
        self.endpoints: list[Endpoint] = []
        self._counter = itertools.count()
        self._on_error = on_error
        self._on_state = on_state
        self._probe_task: asyncio.Task[None] | None = None

    async def start(self, health_interval_s: float) -> None:
        """Open one channel per endpoint (inside the serving loop: grpc.aio binds to it) and start probing."""
        self.endpoints = []
        for url in self.urls:
            channel = grpc.aio.insecure_channel(url, options=CHANNEL_ARGS)
            self.endpoints.append(Endpoint(url, grpcclient.InferenceServerClient(url, channel_args=CHANNEL_ARGS),
                                           channel, service_pb2_grpc.GRPCInferenceServiceStub(channel),
                                           on_state=self._on_state))
        await self.probe_all()
        self._probe_task = asyncio.create_task(self._probe_forever(health_interval_s), name="triton-probe")

    async def close(self) -> None:
        if self._probe_task:
            self._probe_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe_task
        for endpoint in self.endpoints:
            with contextlib.suppress(Exception):
                await endpoint.client.close()
            if endpoint.channel is not None:
                with contextlib.suppress(Exception):
                    await endpoint.channel.close()

    async def probe(self, endpoint: Endpoint) -> bool:
        try:
            ready = await endpoint.client.is_server_ready(client_timeout=self.probe_timeout_s)
        except InferenceServerException as exc:
            endpoint.mark(False, exc.message() or str(exc.status()))
            return False
        endpoint.mark(bool(ready), "" if ready else "server not ready")
        return bool(ready)

    async def probe_all(self) -> list[bool]:
        return list(await asyncio.gather(*(self.probe(ep) for ep in self.endpoints)))

    async def _probe_forever(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.probe_all()
            except Exception:  # a probe must never kill the loop
                log.exception("Triton probe failed")

    def healthy(self) -> list[Endpoint]:
        return [ep for ep in self.endpoints if ep.healthy]

    def _order(self) -> list[Endpoint]:
        """Healthy endpoints first, rotated per call to spread load; then the rest as a last resort."""
        up = self.healthy()
        down = [ep for ep in self.endpoints if not ep.healthy]
        if up:
            start = next(self._counter) % len(up)
            up = up[start:] + up[:start]
        return up + down

    async def call(self, fn: Callable[[grpcclient.InferenceServerClient], Awaitable[T]]) -> T:
        """Run ``fn`` on one endpoint; on a connection-level failure, on the next; TritonUnavailable if none can."""
        return await self._call(lambda endpoint: fn(endpoint.client))

    async def infer(self, request: service_pb2.ModelInferRequest) -> service_pb2.ModelInferResponse:
        """One ModelInfer call, spread and failed over like ``call``; gRPC errors as InferenceServerException."""
        async def model_infer(endpoint: Endpoint) -> service_pb2.ModelInferResponse:
            try:
                return await endpoint.stub.ModelInfer(request)
            except grpc.RpcError as exc:  # the same translation as tritonclient's
                raise InferenceServerException(msg=exc.details(), status=str(exc.code()),
                                               debug_details=exc.debug_error_string()) from None
        return await self._call(model_infer)

    async def _call(self, fn: Callable[[Endpoint], Awaitable[T]]) -> T:
        for endpoint in self._order():
            endpoint.inflight += 1
            try:
                result = await fn(endpoint)
            except InferenceServerException as exc:
                if self._on_error:
                    self._on_error(endpoint.url, status_name(exc))
                if not is_retryable(exc):
                    raise
                endpoint.mark(False, exc.message() or str(exc.status()))
                continue
            finally:
                endpoint.inflight -= 1
            if not endpoint.healthy:
                endpoint.mark(True)
            return result
        raise TritonUnavailable(f"no Triton server is reachable ({len(self.endpoints)} configured)")
