"""The synchronous client: ``Client(url).classify(image)`` and concurrent batch scoring with ``score``."""

from __future__ import annotations

import time
from collections.abc import Callable, Container, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, TypeVar

import httpx

from client import _http
from client._direct import IMAGE_ERROR_CODES, SCHEMES, DirectTransport, read_triton_key
from client.errors import ClientError
from client.images import ImageInput, encode, encode_or_error
from client.inputs import Inputs, check_options, check_timeout, iter_paths
from client.results import Classification, PipelineInfo, ScoreResult
from client.retry import RetryPolicy

T = TypeVar("T")
DEFAULT_URL = "http://127.0.0.1:8080"


class Client:
    """Talks to the gateway (``http://...``) or straight to Triton's gRPC port (``grpc://host:port``)."""

    def __init__(self, url: str = DEFAULT_URL, api_key: str | None = None, timeout: float = 60.0,
                 retry: RetryPolicy | None = None, max_connections: int = 64,
                 triton_key: str | None = None) -> None:
        self.url = url
        self.retry = retry or RetryPolicy()
        check_timeout(timeout)
        self._direct: DirectTransport | None = None
        self._http: httpx.Client | None = None
        if url.startswith(SCHEMES):
            self._direct = DirectTransport(url, timeout, read_triton_key(triton_key))
        else:
            limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
            self._http = httpx.Client(base_url=url, timeout=timeout, headers=_http.auth_headers(api_key),
                                      limits=limits)

    def classify(self, image: ImageInput, top_k: int = 5, pipeline: str | None = None,
                 maps: bool = False) -> Classification:
        """Top-k classes for one image (a path, bytes, a PIL image or an HxW[xC] numpy array); with ``maps``, also
        their score maps (``.maps``, gateway mode only)."""
        check_options(top_k)
        data, kind, _ = encode(image)
        if self._direct and maps:
            raise _http.maps_unsupported()
        if self._direct:
            return self._retrying(lambda: self._direct.classify(data, top_k, pipeline))  # type: ignore[union-attr]
        request = _http.classify_request(data, kind, top_k, pipeline, maps)
        return self._retrying(lambda: _http.parse_classification(self._post(request)))

    def classify_batch(self, images: list[ImageInput], top_k: int = 5,
                       pipeline: str | None = None) -> list[Classification | ClientError]:
        """Several images in one request; a bad image (unreadable, or refused by the server) gives a ClientError in
        its slot, not an exception. The gateway takes up to --max-batch-files (32) images a request."""
        check_options(top_k)
        parts = [encode_or_error(image) for image in images]
        sent = [part for part in parts if not isinstance(part, ClientError)]
        results: list[Classification | ClientError] = []
        if sent and self._direct:
            results = [self._safe(lambda d=d: self.classify(d, top_k, pipeline)) for d, _, _ in sent]
        elif sent:
            request = _http.batch_request(sent, top_k, pipeline)
            results = self._retrying(lambda: _http.parse_batch(self._post(request)))
        answers = iter(results)
        return [part if isinstance(part, ClientError) else next(answers) for part in parts]

    def pipelines(self) -> list[PipelineInfo]:
        if self._direct:
            return list(self._retrying(self._direct.pipelines).values())
        return self._retrying(lambda: _http.parse_pipelines(self._get("/v1/pipelines")))

    def ready(self) -> bool:
        """True when the service (gateway and Triton behind it, or Triton itself) can classify now."""
        try:
            if self._direct:
                return self._direct.ready()
            self._get("/readyz")
        except ClientError:
            return False
        return True

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
                pending.add(pool.submit(self._score_one, path, top_k, pipeline))
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
            with open(path, "rb") as handle:
                data = handle.read()
        except OSError as exc:
            return ScoreResult(path, error=ClientError(0, "read_error", f"{exc.strerror or exc}"))
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

    @staticmethod
    def _safe(call: Callable[[], Classification]) -> Classification | ClientError:
        """An image's own fault as its result; anything else (unknown pipeline, service down) fails the batch, as
        through the gateway."""
        try:
            return call()
        except ClientError as exc:
            if exc.code not in IMAGE_ERROR_CODES:
                raise
            return exc

    def _post(self, request: dict[str, Any]) -> Any:
        return self._send(lambda: self._http.post(**request))  # type: ignore[union-attr]

    def _get(self, path: str) -> Any:
        return self._send(lambda: self._http.get(path))  # type: ignore[union-attr]

    @staticmethod
    def _send(call: Callable[[], httpx.Response]) -> Any:
        try:
            response = call()
        except _http.TRANSPORT_ERRORS as exc:
            raise _http.transport_error(exc) from None
        except httpx.TimeoutException as exc:
            raise _http.timeout_error(exc) from None
        return _http.check(response)

    def close(self) -> None:
        if self._http:
            self._http.close()
        if self._direct:
            self._direct.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
