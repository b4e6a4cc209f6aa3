"""A pool of Triton endpoints: spreads calls over the healthy ones and fails over when one dies.

Inference is a pure function of the image, so a call that an endpoint did not complete (connection refused or
reset, server stopping) is retried on the next endpoint; timeouts are not retried, they would only double the wait.
A call that reached a pipeline step whose stub is dead or frozen never ran: it is retried on the next endpoint,
or on the same one when it is the only one (Triton then picks another instance of the step), a bounded number of
times. A background probe marks endpoints up and down so requests skip a dead replica instead of paying its timeout.
A configured name is one endpoint per address it resolves to, re-resolved every ``dns_refresh_s`` (discovery.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from server.gateway.discovery import is_address, resolve
from server.gateway.errors import TritonUnavailable
from server.gateway.triton_http import TritonHttpClient, TritonHttpError, Unreachable

log = logging.getLogger("server.gateway")
T = TypeVar("T")
UNHEALTHY_STEP_RETRIES = 2  # failing fast, each costs a millisecond; the launcher replaces the stub within seconds


@dataclass
class Endpoint:
    """One Triton server and what the gateway believes about it."""

    url: str
    client: TritonHttpClient = field(repr=False)
    source: str = ""  # the configured URL it was resolved from
    healthy: bool = True
    inflight: int = 0
    failures: int = 0
    last_error: str = ""
    retired: bool = False  # gone from DNS: a probe or call still in flight must not report it again
    on_state: Callable[[Endpoint], None] | None = field(default=None, repr=False)

    def mark(self, healthy: bool, reason: str = "") -> None:
        if healthy != self.healthy:
            log.log(logging.INFO if healthy else logging.WARNING, "Triton %s is now %s%s", self.url,
                    "up" if healthy else "down", f": {reason}" if reason else "")
        self.healthy = healthy
        if not healthy:
            self.failures += 1
            self.last_error = reason
        if self.on_state and not self.retired:
            self.on_state(self)


class TritonPool:
    """Round-robin over healthy endpoints, every endpoint tried at most once per call."""

    def __init__(self, urls: Sequence[str], probe_timeout_s: float = 1.0,
                 on_error: Callable[[str, str], None] | None = None,
                 on_state: Callable[[Endpoint], None] | None = None, key: str | None = None,
                 dns_refresh_s: float = 5.0, on_removed: Callable[[Endpoint], None] | None = None) -> None:
        self.urls = list(urls)
        self.key = key
        self.probe_timeout_s = probe_timeout_s
        self.dns_refresh_s = dns_refresh_s
        self.endpoints: list[Endpoint] = []
        self._counter = itertools.count()
        self._on_error = on_error
        self._on_state = on_state
        self._on_removed = on_removed
        self._retired: list[Endpoint] = []  # gone from DNS, closed once their last call returns
        self._probe_task: asyncio.Task[None] | None = None

    async def start(self, health_interval_s: float) -> None:
        """Resolve and probe every endpoint once, then keep probing (and re-resolving names) in the background."""
        self.endpoints = [self._endpoint(url, source) for source, url in await self._wanted()]
        await self.probe_all()
        self._probe_task = asyncio.create_task(self._probe_forever(health_interval_s), name="triton-probe")

    def _endpoint(self, url: str, source: str) -> Endpoint:
        return Endpoint(url, TritonHttpClient(url, key=self.key), source=source, on_state=self._on_state)

    async def _wanted(self) -> list[tuple[str, str]]:
        """(configured URL, endpoint URL) for every address now; a name that does not resolve keeps the endpoints
        it had (a DNS hiccup must not empty the pool), or stands for itself until it resolves."""
        wanted: dict[str, str] = {}
        for source in self.urls:
            try:
                found = await resolve(source)
            except OSError as exc:
                found = [ep.url for ep in self.endpoints if ep.source == source] or [source]
                log.warning("cannot resolve %s (%s); using %s", source, exc, ", ".join(found))
            for url in found or [source]:
                wanted.setdefault(url, source)
        return [(source, url) for url, source in wanted.items()]

    async def rediscover(self) -> None:
        """Re-resolve the configured names: endpoints for new addresses (probed before they take requests), and
        endpoints whose address is gone retired."""
        wanted = await self._wanted()
        current = {ep.url: ep for ep in self.endpoints}
        added = [self._endpoint(url, source) for source, url in wanted if url not in current]
        await asyncio.gather(*(self.probe(ep) for ep in added))
        fresh = {ep.url: ep for ep in added}
        keep = {url for _, url in wanted}
        for endpoint in self.endpoints:
            if endpoint.url not in keep:
                log.info("Triton %s no longer resolves from %s; retired", endpoint.url, endpoint.source)
                endpoint.retired = True
                self._retired.append(endpoint)
                if self._on_removed:
                    self._on_removed(endpoint)
        for endpoint in added:
            log.info("Triton %s found behind %s", endpoint.url, endpoint.source)
        self.endpoints = [current.get(url) or fresh[url] for _, url in wanted]
        for endpoint in [ep for ep in self._retired if ep.inflight == 0]:
            self._retired.remove(endpoint)
            await endpoint.client.close()

    async def close(self) -> None:
        if self._probe_task:
            self._probe_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe_task
        for endpoint in self.endpoints + self._retired:
            await endpoint.client.close()

    async def probe(self, endpoint: Endpoint) -> bool:
        try:
            ready = await asyncio.wait_for(endpoint.client.is_ready(), self.probe_timeout_s)
        except (Unreachable, TimeoutError) as exc:
            endpoint.mark(False, str(exc) or "no answer to the readiness probe")
            return False
        endpoint.mark(ready, "" if ready else "server not ready")
        return ready

    async def probe_all(self, endpoints: Sequence[Endpoint] | None = None) -> list[bool]:
        return list(await asyncio.gather(*(self.probe(ep) for ep in (self.endpoints if endpoints is None
                                                                      else endpoints))))

    async def _probe_forever(self, interval_s: float) -> None:
        names = not all(is_address(url) for url in self.urls)
        resolved = asyncio.get_running_loop().time()
        while True:
            await asyncio.sleep(interval_s)
            try:
                if names and asyncio.get_running_loop().time() - resolved >= self.dns_refresh_s:
                    resolved = asyncio.get_running_loop().time()
                    await self.rediscover()
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

    async def call(self, fn: Callable[[TritonHttpClient], Awaitable[T]],
                   on_unhealthy_step: Callable[[str], None] | None = None,
                   step_retries: int = UNHEALTHY_STEP_RETRIES) -> T:
        """Run ``fn`` on one endpoint; on a connection-level failure, on the next; TritonUnavailable if none can.

        An unhealthy step is reported to ``on_unhealthy_step`` (with Triton's message) and retried up to
        ``step_retries`` times; after that its error is raised."""
        order = self._order()
        position = 0
        while position < len(order):
            endpoint = order[position]
            endpoint.inflight += 1
            try:
                result = await fn(endpoint.client)
            except (Unreachable, TritonHttpError) as exc:
                code = exc.name if isinstance(exc, TritonHttpError) else "unreachable"
                if self._on_error:
                    self._on_error(endpoint.url, code)
                if isinstance(exc, TritonHttpError) and exc.unhealthy_step:
                    if on_unhealthy_step:
                        on_unhealthy_step(exc.message)
                    if step_retries <= 0:
                        raise
                    step_retries -= 1
                    position = min(position + 1, len(order) - 1)  # the next endpoint, else another instance here
                    await asyncio.sleep(0.01)
                    continue
                if isinstance(exc, TritonHttpError) and not exc.unavailable:
                    raise
                endpoint.mark(False, str(exc))
                position += 1
                continue
            finally:
                endpoint.inflight -= 1
            if not endpoint.healthy:
                endpoint.mark(True)
            return result
        raise TritonUnavailable(f"no Triton server is reachable ({len(self.endpoints)} configured)")
