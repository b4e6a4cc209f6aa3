"""The synchronous client: ``Client(url).classify(image)`` and concurrent batch scoring with ``score``."""

from __future__ import annotations

import contextvars
import time
from collections.abc import Callable, Container, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, TypeVar

from client._core import DEFAULT_URL, is_direct, join_batch, read_error, read_file, split_batch
from client._gateway import GatewayTransport
from client.errors import ClientError
from client.images import ImageInput, encode
from client.inputs import Inputs, check_options, check_timeout, iter_paths
from client.results import Classification, PipelineInfo, ScoreResult
from client.retry import RetryPolicy

T = TypeVar("T")


class Client:
    """Talks to the gateway (``http://...``) or straight to Triton's gRPC port (``grpc://host:port``)."""

    def __init__(self, url: str = DEFAULT_URL, api_key: str | None = None, timeout: float = 60.0,
                 retry: RetryPolicy | None = None, max_connections: int = 64,
                 triton_key: str | None = None) -> None:
        self.url = url
        self.retry = retry or RetryPolicy()
        check_timeout(timeout)
        if is_direct(url):
            from client._direct import DirectTransport, read_triton_key
            self._transport: GatewayTransport | DirectTransport = DirectTransport(
                url, timeout, read_triton_key(triton_key))
        else:
            self._transport = GatewayTransport(url, api_key, timeout, max_connections)

    def classify(self, image: ImageInput, top_k: int = 5, pipeline: str | None = None,
                 maps: bool = False) -> Classification:
        """Top-k classes for one image (a path, bytes, a PIL image or an HxW[xC] numpy array); with ``maps``, also
        their score maps (``.maps``, gateway mode only)."""
        check_options(top_k)
        data, kind, _ = encode(image)
        return self._retrying(lambda: self._transport.classify(data, kind, top_k, pipeline, maps))

    def classify_batch(self, images: list[ImageInput], top_k: int = 5,
                       pipeline: str | None = None) -> list[Classification | ClientError]:
        """Several images in one request; a bad image (unreadable, or refused by the server) gives a ClientError in
        its slot, not an exception. The gateway takes up to --max-batch-files (32) images a request."""
        check_options(top_k)
        parts, sent = split_batch(images)
        answers = self._transport.classify_batch(sent, top_k, pipeline, self._retrying) if sent else []
        return join_batch(parts, answers)

    def pipelines(self) -> list[PipelineInfo]:
        return self._retrying(self._transport.pipelines)

    def shadow_report(self, pipeline: str) -> dict[str, Any]:
        """How the pipeline's shadow candidate compares with it, since start and over the rolling window
        (docs/gateway.md); gateway mode only."""
        return self._transport.shadow_report(pipeline)

    def rollout(self, pipeline: str, action: str, admin_key: str) -> dict[str, Any]:
        """promote, rollback or resume the pipeline's canary (needs an admin key); its rollout as it is now."""
        return self._transport.rollout(pipeline, action, admin_key)

    def ready(self) -> bool:
        """True when the service (gateway and Triton behind it, or Triton itself) can classify now."""
        try:
            return self._transport.ready()
        except ClientError:
            return False

    def score(self, inputs: Inputs, concurrency: int = 8, top_k: int = 5, pipeline: str | None = None,
              skip: Container[str] = ()) -> Iterator[ScoreResult]:
        """Classify many files, ``concurrency`` at a time, yielding each result as it completes.

        ``inputs``: a directory (recursive), a glob, a .txt list of paths, a path, or an iterable of these.
        Per-file failures are yielded as results with ``error`` set; paths in ``skip`` are not scored.
        """
        check_options(top_k, concurrency)  # now, not at the first next()
        return self._score(inputs, concurrency, top_k, pipeline, skip)

    def _score(self, inputs: Inputs, concurrency: int, top_k: int, pipeline: str | None,
               skip: Container[str]) -> Iterator[ScoreResult]:
        pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="score")
        pending: set[Future[ScoreResult]] = set()
        try:
            for path in iter_paths(inputs):
                if path in skip:
                    continue
                # in the caller's context: its trace context, if any, goes with each request
                pending.add(pool.submit(contextvars.copy_context().run, self._score_one, path, top_k, pipeline))
                if len(pending) >= 2 * concurrency:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    yield from (future.result() for future in done)
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                yield from (future.result() for future in done)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _score_one(self, path: str, top_k: int, pipeline: str | None) -> ScoreResult:
        try:
            data = read_file(path)
        except OSError as exc:
            return read_error(path, exc)
        try:
            return ScoreResult(path, classification=self.classify(data, top_k, pipeline))
        except ClientError as exc:
            return ScoreResult(path, error=exc)

    def _retrying(self, call: Callable[[], T]) -> T:
        attempt = 0
        while True:
            try:
                return call()
            except ClientError as error:
                delay = self.retry.delay(attempt, error)
                if delay is None:
                    raise
            time.sleep(delay)
            attempt += 1

    def close(self) -> None:
        self._transport.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
