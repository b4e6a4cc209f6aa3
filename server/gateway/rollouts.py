"""Rollouts on live traffic, as a pipeline's config declares them (server/rollout_spec.py):

- **shadow**: a share of the requests the pipeline answers is copied to a candidate pipeline off the request path:
  a bounded queue whose one worker sends a copy only while the service is quiet (fewer users' requests in flight
  than ``busy_at``), so under load the queue fills and copies are dropped, and counted, before users wait; the two
  answers are compared: top-1 agreement, top-5 overlap, max |Δp| over every class, the candidate's latency ratio
  and errors; disagreements go to a JSON-lines log;
- **canary**: a share of the requests, sticky per key, is answered by another pipeline; a canary failure (the
  service's fault, not the image's) is answered by the stable pipeline instead, and past the limits (error rate,
  latency ratio, agreement from a shadow on it) the canary is rolled back; promoted or rolled back by hand through
  the admin route.

State lives in this gateway's memory: counts since start, rolling windows, the canary's weight now. A roll-back
holds until the gateway restarts or the pipeline's rollout changes; a durable change is a change of pipelines.toml.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import random
import statistics
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from client.contract import IMAGE_ERRORS
from server.gateway.admission import Admission
from server.gateway.classifier import Classifier
from server.gateway.errors import ApiError
from server.gateway.metrics import GatewayMetrics
from server.gateway.pipelines import ServedPipeline
from server.gateway.request_context import request_id
from server.rollout_spec import Canary, Shadow

log = logging.getLogger("server.gateway")
STICKY_HEADER = "x-rollout-key"  # the canary's stickiness: this header, else the API key, else none
SHADOW_QUEUE = 16  # shadow copies waiting for a quiet moment; more are dropped
SHADOW_QUEUE_BYTES = 64 * 2**20  # and no more images than this waiting
QUIET_POLL_S = 0.005  # how often a waiting shadow job looks for a quiet moment
ACTIONS = ("promote", "rollback", "resume")


def sticky_key(headers: Mapping[str, str] | None) -> str | None:
    """What keeps a caller on one side of a canary: its X-Rollout-Key, else its API key; None: no stickiness."""
    if headers is None:
        return None
    explicit = headers.get(STICKY_HEADER, "").strip()
    if explicit:
        return "header:" + explicit
    scheme, _, token = headers.get("authorization", "").partition(" ")
    return "key:" + token.strip() if scheme.lower() == "bearer" and token.strip() else None


@dataclass(frozen=True)
class Comparison:
    top1_agrees: bool
    top5_overlap: float
    max_abs_diff: float
    latency_ratio: float


def compare(primary: list[dict[str, Any]], candidate: list[dict[str, Any]], latency_ratio: float) -> Comparison:
    """Two answers, each every class's score best first (Triton's classification extension, k = all classes)."""
    mine = {p["index"]: p["score"] for p in primary}
    theirs = {p["index"]: p["score"] for p in candidate}
    top = min(5, len(primary), len(candidate)) or 1
    overlap = len({p["index"] for p in primary[:top]} & {p["index"] for p in candidate[:top]}) / top
    diff = max((abs(mine.get(i, 0.0) - theirs.get(i, 0.0)) for i in mine.keys() | theirs.keys()), default=0.0)
    return Comparison(bool(primary and candidate and primary[0]["index"] == candidate[0]["index"]), overlap, diff,
                      latency_ratio)


class ShadowStats:
    """A pipeline's comparisons with its shadow: counts since start and the last ``window`` of them."""

    def __init__(self, primary: str, shadow: Shadow) -> None:
        self.primary, self.shadow = primary, shadow
        self.compared = self.agreements = self.errors = self.dropped = 0
        self.overlap_sum = self.max_abs_diff = 0.0
        self.recent: deque[Comparison] = deque(maxlen=shadow.window)

    def add(self, comparison: Comparison) -> None:
        self.compared += 1
        self.agreements += comparison.top1_agrees
        self.overlap_sum += comparison.top5_overlap
        self.max_abs_diff = max(self.max_abs_diff, comparison.max_abs_diff)
        self.recent.append(comparison)

    def window_agreement(self) -> float | None:
        return sum(c.top1_agrees for c in self.recent) / len(self.recent) if self.recent else None

    def window_latency_ratio(self) -> float | None:
        return round(statistics.median(c.latency_ratio for c in self.recent), 4) if self.recent else None

    def report(self) -> dict[str, Any]:
        recent = list(self.recent)
        window = _summary(len(recent), sum(c.top1_agrees for c in recent), sum(c.top5_overlap for c in recent),
                          max((c.max_abs_diff for c in recent), default=0.0))
        window["latency_ratio"] = self.window_latency_ratio()
        since = _summary(self.compared, self.agreements, self.overlap_sum, self.max_abs_diff)
        since.update(errors=self.errors, dropped=self.dropped)
        return {"pipeline": self.primary, "candidate": self.shadow.pipeline, "fraction": self.shadow.fraction,
                "since_start": since, "window": window}


def _summary(count: int, agreements: int, overlap: float, max_diff: float) -> dict[str, Any]:
    return {"compared": count, "top1_agreements": agreements,
            "top1_agreement": round(agreements / count, 6) if count else None,
            "top5_overlap": round(overlap / count, 6) if count else None, "max_abs_diff": round(max_diff, 6)}


class CanaryState:
    """A canary's weight now and its recent outcomes, judged against its limits after each one."""

    def __init__(self, primary: str, canary: Canary) -> None:
        self.primary, self.config = primary, canary
        self.weight, self.state, self.reason, self.changed_at = canary.weight, "active", "", 0.0
        self.outcomes: deque[tuple[bool, float]] = deque(maxlen=canary.window)  # (answered, seconds)
        self.stable_latency: deque[float] = deque(maxlen=canary.window)

    def chooses(self, key: str | None) -> bool:
        """Whether this request goes to the canary: a fixed bucket per key (sticky), a random one without."""
        if self.weight <= 0.0:
            return False
        if key is None:
            return random.random() < self.weight
        digest = hashlib.sha256(f"{self.primary}\0{key}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64 < self.weight

    def judge(self, agreement: float | None) -> str | None:
        """The limit crossed, if any, once enough canary answers are in."""
        config = self.config
        if len(self.outcomes) < config.min_requests:
            return None
        failed = sum(not ok for ok, _ in self.outcomes) / len(self.outcomes)
        if failed > config.max_error_rate:
            return f"error rate {failed:.1%} > {config.max_error_rate:.1%}"
        answered = [seconds for ok, seconds in self.outcomes if ok]
        if answered and len(self.stable_latency) >= config.min_requests:
            ratio = statistics.median(answered) / max(statistics.median(self.stable_latency), 1e-9)
            if ratio > config.max_latency_ratio:
                return f"latency ratio {ratio:.2f} > {config.max_latency_ratio:g}"
        if config.min_agreement and agreement is not None and agreement < config.min_agreement:
            return f"top-1 agreement {agreement:.1%} < {config.min_agreement:.1%}"
        return None

    def set(self, state: str, weight: float, reason: str) -> None:
        self.state, self.weight, self.reason, self.changed_at = state, weight, reason, time.time()
        if state == "active":
            self.outcomes.clear()
            self.stable_latency.clear()

    def report(self) -> dict[str, Any]:
        return {"pipeline": self.config.pipeline, "weight": self.weight, "configured_weight": self.config.weight,
                "state": self.state, "reason": self.reason,
                "changed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.changed_at))
                if self.changed_at else None,
                "limits": {"max_error_rate": self.config.max_error_rate,
                           "max_latency_ratio": self.config.max_latency_ratio,
                           "min_agreement": self.config.min_agreement, "window": self.config.window,
                           "min_requests": self.config.min_requests}}


@dataclass(frozen=True)
class ShadowJob:
    pipeline: ServedPipeline
    image: bytes
    answer: list[dict[str, Any]]
    seconds: float
    request_id: str | None


class Rollouts:
    """Answers a classification request the way its pipeline's rollout says, and keeps the rollouts' state."""

    def __init__(self, classifier: Classifier, admission: Admission, metrics: GatewayMetrics,
                 disagreement_log: Path, busy_at: int = 1) -> None:
        """``busy_at``: users' requests in flight from which the service counts as busy (shadow copies wait)."""
        self.classifier, self.admission, self.metrics = classifier, admission, metrics
        self.busy_at = busy_at
        self.disagreement_log = disagreement_log
        self.shadows: dict[str, ShadowStats] = {}
        self.canaries: dict[str, CanaryState] = {}
        self.queue: asyncio.Queue[ShadowJob] = asyncio.Queue(SHADOW_QUEUE)
        self._workers: list[asyncio.Task[None]] = []
        self._kept_image_bytes = 0
        self._queued_bytes = 0

    def start(self) -> None:
        self._workers = [asyncio.create_task(self._work())]

    async def close(self) -> None:
        for worker in self._workers:
            worker.cancel()
        for worker in self._workers:
            with contextlib.suppress(asyncio.CancelledError):
                await worker

    async def classify(self, pipeline: ServedPipeline, image: bytes, top_k: int, maps: bool = False,
                       headers: Mapping[str, str] | None = None) -> dict[str, Any]:
        """The answer body, from the canary or the pipeline itself; a shadow copy queued when sampled. Score maps
        come from the pipeline itself, outside any rollout. ``headers``: the request's (its canary stickiness)."""
        rollout = pipeline.rollout
        if rollout is None or maps:
            return await self.classifier.classify_to_dict(pipeline, image, top_k, maps=maps)
        canary = self._canary(pipeline)
        if canary is not None and canary.chooses(sticky_key(headers)):
            answer = await self._from_canary(pipeline, canary, image, top_k)
            if answer is not None:
                return answer
        sampled = rollout.shadow is not None and random.random() < rollout.shadow.fraction
        started = time.perf_counter()
        body = await self.classifier.classify_to_dict(pipeline, image, (pipeline.num_classes or top_k) if sampled
                                                      else top_k)
        seconds = time.perf_counter() - started
        if canary is not None:
            canary.stable_latency.append(seconds)
        if sampled:
            every = body["predictions"]
            body["predictions"] = every[:top_k]
            self._queue_shadow(ShadowJob(pipeline, image, every, seconds, request_id()))
        return body

    async def _from_canary(self, pipeline: ServedPipeline, canary: CanaryState, image: bytes,
                           top_k: int) -> dict[str, Any] | None:
        """The canary's answer; None when it failed for the service's sake (the stable pipeline answers)."""
        target = await self.classifier.catalog.get(canary.config.pipeline)
        labels = (pipeline.name, canary.config.pipeline)
        started = time.perf_counter()
        try:
            if target is None:
                raise ApiError(503, "canary_unavailable", f"canary {canary.config.pipeline!r} is not served")
            body = await self.classifier.classify_to_dict(target, image, top_k)
        except ApiError as error:
            if error.code in IMAGE_ERRORS:
                raise  # the image's fault: the stable pipeline would refuse it alike
            canary.outcomes.append((False, time.perf_counter() - started))
            self.metrics.canary_requests.labels(*labels, "error").inc()
            self._judge(pipeline.name)
            return None
        canary.outcomes.append((True, time.perf_counter() - started))
        self.metrics.canary_requests.labels(*labels, "ok").inc()
        self._judge(pipeline.name)
        return body

    def _canary(self, pipeline: ServedPipeline) -> CanaryState | None:
        config = pipeline.rollout.canary if pipeline.rollout else None
        state = self.canaries.get(pipeline.name)
        if config is None:
            self.canaries.pop(pipeline.name, None)
            return None
        if state is None or state.config != config:  # new, or its pipelines.toml entry changed
            state = self.canaries[pipeline.name] = CanaryState(pipeline.name, config)
            self.metrics.canary_weight.labels(pipeline.name, config.pipeline).set(state.weight)
        return state

    def _shadow_stats(self, pipeline: ServedPipeline) -> ShadowStats:
        shadow = pipeline.rollout.shadow
        stats = self.shadows.get(pipeline.name)
        if stats is None or stats.shadow != shadow:
            stats = self.shadows[pipeline.name] = ShadowStats(pipeline.name, shadow)
        return stats

    def _queue_shadow(self, job: ShadowJob) -> None:
        stats = self._shadow_stats(job.pipeline)
        if self.queue.full() or self._queued_bytes + len(job.image) > SHADOW_QUEUE_BYTES:
            stats.dropped += 1  # the service has been busy for a while: shadow work goes first
            self.metrics.shadow_requests.labels(job.pipeline.name, stats.shadow.pipeline, "dropped").inc()
            return
        self._queued_bytes += len(job.image)
        self.queue.put_nowait(job)

    async def _work(self) -> None:
        while True:
            job = await self.queue.get()
            try:
                while self.admission.active >= self.busy_at:
                    await asyncio.sleep(QUIET_POLL_S)
                self._queued_bytes -= len(job.image)
                await self._compare(job)
            except Exception as exc:  # a worker must outlive any one job
                log.warning("shadow comparison failed: %s", exc)
            finally:
                self.queue.task_done()

    async def _compare(self, job: ShadowJob) -> None:
        stats = self._shadow_stats(job.pipeline)
        labels = (job.pipeline.name, stats.shadow.pipeline)
        started = time.perf_counter()
        try:
            candidate = await self.classifier.catalog.get(stats.shadow.pipeline)
            if candidate is None:
                raise ApiError(503, "shadow_unavailable", f"shadow {stats.shadow.pipeline!r} is not served")
            body = await self.classifier.classify_to_dict(candidate, job.image, candidate.num_classes or 5,
                                                          count=False)
        except ApiError:
            stats.errors += 1
            self.metrics.shadow_requests.labels(*labels, "error").inc()
            return
        comparison = compare(job.answer, body["predictions"],
                             (time.perf_counter() - started) / max(job.seconds, 1e-9))
        stats.add(comparison)
        self.metrics.shadow_requests.labels(*labels, "compared").inc()
        self.metrics.shadow_agreements.labels(*labels).inc(comparison.top1_agrees)
        self.metrics.shadow_top5_overlap.labels(*labels).inc(comparison.top5_overlap)
        self.metrics.shadow_max_abs_diff.labels(*labels).set(stats.max_abs_diff)
        self.metrics.shadow_latency_ratio.labels(*labels).set(stats.window_latency_ratio())
        if not comparison.top1_agrees:
            self._log_disagreement(job, stats, body["predictions"], comparison)
        canary = self.canaries.get(job.pipeline.name)
        if canary is not None and canary.config.pipeline == stats.shadow.pipeline:
            self._judge(job.pipeline.name)

    def _log_disagreement(self, job: ShadowJob, stats: ShadowStats, candidate: list[dict[str, Any]],
                          comparison: Comparison) -> None:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "request_id": job.request_id,
            "pipeline": job.pipeline.name, "candidate": stats.shadow.pipeline, "top_k": _top(job.answer),
            "candidate_top_k": _top(candidate), "max_abs_diff": round(comparison.max_abs_diff, 6)}
        budget = stats.shadow.keep_images_mb * 1e6
        if job.request_id and self._kept_image_bytes + len(job.image) <= budget:
            image = self.disagreement_log.parent / "images" / f"{job.request_id}{_suffix(job.image)}"
            image.parent.mkdir(parents=True, exist_ok=True)
            image.write_bytes(job.image)
            self._kept_image_bytes += len(job.image)
            entry["image"] = str(image)
        self.disagreement_log.parent.mkdir(parents=True, exist_ok=True)
        with self.disagreement_log.open("a") as handle:
            handle.write(json.dumps(entry, separators=(",", ":")) + "\n")

    def _judge(self, name: str) -> None:
        canary = self.canaries.get(name)
        if canary is None or canary.state == "rolled_back":
            return
        shadow = self.shadows.get(name)
        agreement = shadow.window_agreement() if shadow and shadow.shadow.pipeline == canary.config.pipeline \
            else None
        reason = canary.judge(agreement)
        if reason:
            self._set(canary, "rolled_back", 0.0, reason, "automatic")

    def _set(self, canary: CanaryState, state: str, weight: float, reason: str, kind: str) -> None:
        canary.set(state, weight, reason)
        labels = (canary.primary, canary.config.pipeline)
        self.metrics.canary_weight.labels(*labels).set(weight)
        if state == "rolled_back":
            self.metrics.canary_rollbacks.labels(*labels, kind).inc()
        log.warning("canary %r of pipeline %r: %s (weight %g): %s", canary.config.pipeline, canary.primary, state,
                    weight, reason)

    def act(self, pipeline: ServedPipeline, action: str) -> dict[str, Any]:
        """promote (every request to the canary), rollback (none), resume (its configured weight): by hand."""
        canary = self._canary(pipeline)
        if canary is None:
            raise ApiError(409, "no_canary", f"pipeline {pipeline.name!r} has no canary")
        if action == "promote":
            self._set(canary, "promoted", 1.0, "by hand", "manual")
        elif action == "rollback":
            self._set(canary, "rolled_back", 0.0, "by hand", "manual")
        else:
            self._set(canary, "active", canary.config.weight, "resumed by hand", "manual")
        return self.status(pipeline)

    def status(self, pipeline: ServedPipeline) -> dict[str, Any]:
        """What /v1/pipelines shows of a pipeline's rollout."""
        rollout = pipeline.rollout
        if rollout is None:
            return {}
        out: dict[str, Any] = {}
        if rollout.shadow:
            out["shadow"] = {"pipeline": rollout.shadow.pipeline, "fraction": rollout.shadow.fraction}
        canary = self._canary(pipeline)
        if canary is not None:
            out["canary"] = canary.report()
        return out

    def shadow_report(self, pipeline: ServedPipeline) -> dict[str, Any]:
        if pipeline.rollout is None or pipeline.rollout.shadow is None:
            raise ApiError(404, "no_shadow", f"pipeline {pipeline.name!r} has no shadow")
        return self._shadow_stats(pipeline).report()


def _top(predictions: Iterable[dict[str, Any]], k: int = 5) -> list[dict[str, Any]]:
    return [{"index": p["index"], "label": p["label"], "score": round(p["score"], 6)} for p in list(predictions)[:k]]


def _suffix(image: bytes) -> str:
    for magic, suffix in ((b"\xff\xd8", ".jpg"), (b"\x89PNG", ".png"), (b"GIF8", ".gif"), (b"BM", ".bmp")):
        if image.startswith(magic):
            return suffix
    return ".webp" if image[8:12] == b"WEBP" else ".img"
