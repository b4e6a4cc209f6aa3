"""The gateway's long-lived parts for one set of settings, wired once: the Triton pool, the pipeline catalog and
health, the classifier, admission, metrics and the auth check. Routers and the raw-body route receive them ready."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Awaitable, Callable

from starlette.requests import Request

from server.gateway.admission import Admission
from server.gateway.auth import admin_auth, bearer_auth
from server.gateway.classifier import Classifier
from server.gateway.config import Settings
from server.gateway.errors import ApiError
from server.gateway.metrics import GatewayMetrics
from server.gateway.pipeline_health import PipelineHealth
from server.gateway.pipelines import PipelineCatalog
from server.gateway.rollouts import Rollouts
from server.gateway.tracing import NoTracing, tracing_for
from server.gateway.triton_pool import TritonPool

METADATA_TIMEOUT_S = 5.0  # health probes and pipeline metadata; inference has its own --triton-timeout-s


@dataclasses.dataclass(frozen=True)
class Services:
    settings: Settings
    metrics: GatewayMetrics
    pool: TritonPool
    catalog: PipelineCatalog
    health: PipelineHealth
    classifier: Classifier
    admission: Admission
    check_auth: Callable[[Request], Awaitable[None]]
    tracing: NoTracing
    rollouts: Rollouts
    check_admin: Callable[[Request], Awaitable[None]]

    async def start(self) -> None:
        """Connect to Triton, start the degraded-pipeline canary, and learn the pipelines if Triton is up."""
        await self.pool.start(self.settings.health_interval_s)
        self.health.start(self.classifier.canary)
        self.rollouts.start()
        with contextlib.suppress(ApiError):
            await self.catalog.refresh()

    async def close(self) -> None:
        """Let abandoned inferences finish before the connections close (closing could cancel them in Triton)."""
        await self.health.close()
        await self.rollouts.close()
        await self.classifier.drain(timeout_s=10.0)
        await self.pool.close()
        self.tracing.shutdown()


def build_services(settings: Settings) -> Services:
    metrics = GatewayMetrics()
    pool = TritonPool(settings.triton_urls, probe_timeout_s=1.0,
                      on_error=lambda url, code: metrics.triton_errors.labels(url, code).inc(),
                      on_state=lambda ep: metrics.endpoint_up.labels(ep.url).set(1 if ep.healthy else 0),
                      key=settings.triton_key, dns_refresh_s=settings.dns_refresh_s,
                      on_removed=lambda ep: metrics.forget_endpoint(ep.url))
    catalog = PipelineCatalog(pool, settings.catalog_refresh_s, METADATA_TIMEOUT_S, settings.default_pipeline)
    health = PipelineHealth()
    tracing = tracing_for(settings.tracing)
    classifier = Classifier(pool, catalog, metrics, settings.triton_timeout_s, max_abandoned=settings.max_inflight,
                            health=health, tracing=tracing)
    admission = Admission(settings.max_inflight, settings.max_queue, settings.queue_timeout_s,
                          settings.retry_after_s)
    metrics.queued.set_function(lambda: admission.waiting)
    metrics.active.set_function(lambda: admission.active)
    metrics.abandoned.set_function(lambda: len(classifier.abandoned))
    rollouts = Rollouts(classifier, admission, metrics, settings.shadow_log, settings.shadow_busy_inflight)
    return Services(settings, metrics, pool, catalog, health, classifier, admission, bearer_auth(settings.api_keys),
                    tracing, rollouts, admin_auth(settings.admin_keys))
