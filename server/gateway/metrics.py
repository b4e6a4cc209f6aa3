"""Prometheus metrics, and a plain ASGI middleware that records every request without buffering responses.

The registry is per app (not the process-global default), so tests and several apps in one process don't collide.
Label values are bounded: routes are the app's templates, pipelines are known names or "unknown".
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from starlette.types import ASGIApp, Message, Receive, Scope, Send

disable_created_metrics()  # the gateway is its own process; *_created series only add noise to every scrape
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class GatewayMetrics:
    """Every metric the gateway exports."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("vgg_gateway_requests", "HTTP requests served", ["route", "pipeline", "status"],
                                registry=self.registry)
        self.latency = Histogram("vgg_gateway_request_duration_seconds", "HTTP request latency",
                                 ["route", "pipeline", "status"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.inflight = Gauge("vgg_gateway_in_flight_requests", "HTTP requests being served", registry=self.registry)
        self.queued = Gauge("vgg_gateway_queued_requests", "Requests waiting for a service slot",
                            registry=self.registry)
        self.active = Gauge("vgg_gateway_active_requests", "Requests holding a service slot",
                            registry=self.registry)
        self.abandoned = Gauge("vgg_gateway_abandoned_triton_calls",
                               "Timed-out inferences still running in Triton (never cancelled there)",
                               registry=self.registry)
        self.images = Counter("vgg_gateway_images", "Images classified, by outcome", ["pipeline", "outcome"],
                              registry=self.registry)
        self.cascade_answers = Counter("vgg_gateway_cascade_answers", "Images a cascade answered, by the stage "
                                       "that answered", ["pipeline", "stage"], registry=self.registry)
        self.triton_latency = Histogram("vgg_gateway_triton_duration_seconds", "Triton inference latency",
                                        ["pipeline"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.triton_errors = Counter("vgg_gateway_triton_errors", "Errors returned by or reaching Triton",
                                     ["endpoint", "code"], registry=self.registry)
        self.endpoint_up = Gauge("vgg_gateway_triton_endpoint_up", "1 when the Triton endpoint answers its probe",
                                 ["endpoint"], registry=self.registry)
        # rollouts (server/gateway/rollouts.py): labelled by the served pipeline and its candidate
        pair = ["pipeline", "candidate"]
        self.shadow_requests = Counter("vgg_gateway_shadow_requests", "Requests copied to a shadow candidate, by "
                                       "outcome (compared, error, dropped)", [*pair, "outcome"],
                                       registry=self.registry)
        self.shadow_agreements = Counter("vgg_gateway_shadow_top1_agreements", "Shadow comparisons whose top-1 "
                                         "classes agree", pair, registry=self.registry)
        self.shadow_top5_overlap = Counter("vgg_gateway_shadow_top5_overlap", "Sum over comparisons of the share "
                                           "of top-5 classes both answered", pair, registry=self.registry)
        self.shadow_max_abs_diff = Gauge("vgg_gateway_shadow_max_abs_diff", "Largest |p - p'| of any class over "
                                         "all comparisons", pair, registry=self.registry)
        self.shadow_latency_ratio = Gauge("vgg_gateway_shadow_latency_ratio", "Candidate's median latency over "
                                          "the primary's, in the rolling window", pair, registry=self.registry)
        self.canary_requests = Counter("vgg_gateway_canary_requests", "Requests a canary answered (ok) or failed "
                                       "(error: answered by the stable pipeline instead)", [*pair, "outcome"],
                                       registry=self.registry)
        self.canary_weight = Gauge("vgg_gateway_canary_weight", "Share of the pipeline's requests its canary "
                                   "answers now (0 once rolled back)", pair, registry=self.registry)
        self.canary_rollbacks = Counter("vgg_gateway_canary_rollbacks", "Canary roll-backs, automatic or by hand",
                                        [*pair, "reason"], registry=self.registry)

    def forget_endpoint(self, url: str) -> None:
        """An endpoint that discovery retired: no stale series for it (its error counts stay)."""
        with contextlib.suppress(KeyError):
            self.endpoint_up.remove(url)


class MetricsMiddleware:
    """Counts and times each HTTP request by route template, pipeline and status code."""

    def __init__(self, app: ASGIApp, metrics: GatewayMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = {"code": 500}
        scope.setdefault("state", {})

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        self.metrics.inflight.inc()
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.inflight.dec()
            route = route_template(scope)
            pipeline = scope["state"].get("pipeline", "")
            labels = (route, pipeline, str(status["code"]))
            self.metrics.requests.labels(*labels).inc()
            self.metrics.latency.labels(*labels).observe(time.perf_counter() - started)


def route_template(scope: dict[str, Any]) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"
