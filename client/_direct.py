"""Direct-to-Triton mode: the same Classification results without the gateway, over Triton's gRPC API.

For bulk scoring on the machine (or network) that runs Triton: one hop less. Needs ``tritonclient[grpc]``
(``pip install './client[triton]'``). It reads pipelines from Triton exactly as the gateway does: ensembles carrying
a ``pipeline.spec`` parameter, member versions from the repository index.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any, TypeVar

import numpy as np

from client._core import DIRECT_SCHEMES, Encoded
from client._http import gateway_only, maps_unsupported
from client.contract import (
    CASCADE_KIND,
    CASCADE_OUTPUTS,
    GRPC_KEY_HEADER,
    IMAGE_ERRORS,
    INPUT,
    INVALID_IMAGE,
    KEY_ENV,
    KEY_FILE_ENV,
    KIND_PARAMETER,
    PROBS,
    RESTRICTED,
    SPEC_PARAMETER,
    UNHEALTHY_STEP,
    find_image_error,
    parse_class,
)
from client.contract import default_pipeline as contract_default
from client.errors import CONNECTION_ERROR, ClientError
from client.results import Classification, PipelineInfo, Prediction
from client.trace_context import trace_headers

IMAGE_ERROR_CODES = frozenset(IMAGE_ERRORS)  # an image's own fault: its slot in a batch, not the whole batch
T = TypeVar("T")
PIPELINES_MAX_AGE_S = 15.0  # as the gateway's --catalog-refresh-s


def strip_scheme(url: str) -> str:
    for scheme in DIRECT_SCHEMES:
        if url.startswith(scheme):
            return url[len(scheme):].rstrip("/")
    return url


def _import_grpc(aio: bool) -> Any:
    try:
        if aio:
            import tritonclient.grpc.aio as module
        else:
            import tritonclient.grpc as module
    except ImportError as exc:
        raise ImportError("direct-to-Triton mode needs tritonclient: pip install './client[triton]'") from exc
    return module


def read_triton_key(key: str | None = None) -> str | None:
    """``key``, else ``$VGG_TRITON_KEY``, else the first line of the file ``$VGG_TRITON_KEY_FILE`` names."""
    if key:
        return key
    if os.environ.get(KEY_ENV):
        return os.environ[KEY_ENV].strip()
    path = os.environ.get(KEY_FILE_ENV)
    if not path:
        return None
    try:
        lines = [line.strip() for line in open(path, encoding="utf-8") if line.strip()]  # noqa: SIM115
    except OSError as exc:
        raise ValueError(f"cannot read the Triton key file {path} (${KEY_FILE_ENV}): {exc.strerror}") from None
    if not lines:
        raise ValueError(f"the Triton key file {path} (${KEY_FILE_ENV}) is empty")
    return lines[0]


def map_error(exc: Exception) -> ClientError:
    """A Triton error as the gateway would have reported it."""
    message = exc.message() if hasattr(exc, "message") else str(exc)
    status = exc.status() if hasattr(exc, "status") else ""
    message = message or ""
    found = find_image_error(message)
    if found:
        return ClientError(found.status, found.code, found.message)
    if RESTRICTED in message:
        return ClientError(401, "unauthorized", f"Triton refused the call without its access key: {message.strip()} "
                                                f"(set ${KEY_ENV} or ${KEY_FILE_ENV}, or pass triton_key)")
    if status in ("StatusCode.UNAVAILABLE", "StatusCode.CANCELLED"):
        return ClientError(0, CONNECTION_ERROR, message or "Triton unreachable")
    if UNHEALTHY_STEP in message:  # the request never ran; the step is being restarted: retryable, as via the gateway
        return ClientError(503, "triton_unavailable", message.strip(), retry_after=0.2)
    if status == "StatusCode.DEADLINE_EXCEEDED":
        return ClientError(504, "triton_timeout", "Triton did not answer in time")
    if "unknown model" in message.lower() or status == "StatusCode.NOT_FOUND":
        return ClientError(404, "unknown_pipeline", message)
    if status == "StatusCode.INVALID_ARGUMENT":
        return ClientError(422, INVALID_IMAGE, message.strip().splitlines()[0] if message.strip() else "")
    return ClientError(502, "triton_error", message)


def parse_classes(raw: np.ndarray) -> tuple[Prediction, ...]:
    return tuple(Prediction(label=found.label, index=found.index, score=found.score)
                 for found in map(parse_class, raw.reshape(-1)))


def parse_pipelines(index: dict[str, Any], configs: list[dict[str, Any]]) -> dict[str, PipelineInfo]:
    ready: dict[str, list[str]] = {}
    for model in index.get("models", []):
        if model.get("state") == "READY":
            ready.setdefault(model["name"], []).append(str(model.get("version", "")))
    found: dict[str, PipelineInfo] = {}
    for response in configs:
        config = response.get("config", response)
        parameters = config.get("parameters", {})
        raw = parameters.get(SPEC_PARAMETER, {}).get("string_value")
        cascade = parameters.get(KIND_PARAMETER, {}).get("string_value") == CASCADE_KIND  # its own entry
        if not raw or (config.get("platform") != "ensemble" and not cascade):
            continue
        spec = json.loads(raw)
        dims = [int(d) for out in config.get("output", []) if out.get("name") == PROBS for d in out.get("dims", [])]
        members = tuple(spec.get("members", []))
        versions = {m: max(ready[m], key=lambda v: int(v) if v.isdigit() else -1) for m in members if ready.get(m)}
        found[config["name"]] = PipelineInfo(
            name=config["name"], members=members, scales=tuple(spec.get("scales", [])),
            mode=spec.get("mode", "dense"), flips=bool(spec.get("flips", False)),
            num_classes=dims[-1] if dims else 0, versions=versions,
            weights=tuple(spec["weights"]) if spec.get("weights") else None,
            description=spec.get("description", ""))
    default = contract_default(found)
    return {name: _with_default(info, name == default) for name, info in found.items()}


def _with_default(info: PipelineInfo, default: bool) -> PipelineInfo:
    return replace(info, default=default)


def default_pipeline(pipelines: dict[str, PipelineInfo]) -> str:
    for info in pipelines.values():
        if info.default:
            return info.name
    raise ClientError(503, "no_pipelines", "Triton serves no pipeline")


def request_parts(module: Any, data: bytes, top_k: int) -> tuple[Any, Any]:
    tensor = module.InferInput(INPUT, [1], "BYTES")
    tensor.set_data_from_numpy(np.array([data], dtype=np.object_))
    return tensor, module.InferRequestedOutput(PROBS, class_count=top_k)




def requested_outputs(module: Any, info: PipelineInfo, output: Any) -> list[Any]:
    """probs, and for a cascade which stage answered and which ran."""
    extra = CASCADE_OUTPUTS if info.mode == "cascade" else ()
    return [output, *(module.InferRequestedOutput(name) for name in extra)]


def classification(result: Any, info: PipelineInfo, started: float) -> Classification:
    stage, stages = None, ()
    if info.mode == "cascade":
        stages = tuple(item.decode() for item in result.as_numpy("stages").reshape(-1))
        stage = result.as_numpy("stage").reshape(-1)[0].decode()
    return Classification(parse_classes(result.as_numpy(PROBS)), info.name, dict(info.versions),
                          timing_ms=round((time.perf_counter() - started) * 1000, 3), stage=stage, stages=stages)



def prepare_request(module: Any, pipelines: dict, data: bytes, top_k: int, pipeline: str | None) -> tuple:
    """Check the pipeline and the image, clamp top-k: (pipeline info, input tensor, requested output)."""
    name = pipeline or default_pipeline(pipelines)
    info = pipelines.get(name)
    if info is None:
        raise ClientError(404, "unknown_pipeline",
                          f"unknown pipeline {name!r}; available: {', '.join(sorted(pipelines)) or 'none'}")
    if not data:
        raise ClientError(422, INVALID_IMAGE, "the image is empty")
    k = min(top_k, info.num_classes) if info.num_classes else top_k
    tensor, output = request_parts(module, data, k)
    return info, tensor, output

def image_fault_as_answer(call: Callable[[], Classification]) -> Classification | ClientError:
    """An image's own fault as its batch slot's answer; anything else (unknown pipeline, service down) fails the
    batch, as through the gateway."""
    try:
        return call()
    except ClientError as exc:
        if exc.code not in IMAGE_ERROR_CODES:
            raise
        return exc


class PipelineCache:
    """What Triton serves, re-read after ``max_age_s`` (as the gateway does), so a long-lived client follows
    repository changes."""

    def __init__(self, max_age_s: float = PIPELINES_MAX_AGE_S) -> None:
        self.max_age_s = max_age_s
        self.value: dict[str, PipelineInfo] | None = None
        self.read_at = 0.0

    def fresh(self) -> dict[str, PipelineInfo] | None:
        return self.value if time.monotonic() - self.read_at < self.max_age_s else None

    def keep(self, value: dict[str, PipelineInfo]) -> dict[str, PipelineInfo]:
        self.value, self.read_at = value, time.monotonic()
        return value


class DirectTransport:
    """Synchronous gRPC to Triton. The sync tritonclient is not shared across threads: each call borrows an idle
    client (a new one only when all are busy), so a pool of N threads ends up with N clients, however many jobs."""

    def __init__(self, url: str, timeout: float, key: str | None = None) -> None:
        self.url = strip_scheme(url)
        self.timeout = timeout
        self.headers = {GRPC_KEY_HEADER: key} if key else None
        self._module = _import_grpc(aio=False)
        self._idle: list[Any] = []
        self._clients: list[Any] = []
        self._lock = threading.Lock()
        self._pipelines = PipelineCache()

    def _borrow(self) -> Any:
        with self._lock:
            if self._idle:
                return self._idle.pop()
            client = self._module.InferenceServerClient(self.url)
            self._clients.append(client)
            return client

    def _give_back(self, client: Any) -> None:
        with self._lock:
            if client in self._clients:  # not if closed meanwhile
                self._idle.append(client)

    def pipelines(self) -> list[PipelineInfo]:
        return list(self.catalog().values())

    def catalog(self) -> dict[str, PipelineInfo]:
        """The pipelines by name, asked of Triton at most every PIPELINES_MAX_AGE_S."""
        cached = self._pipelines.fresh()
        if cached is not None:
            return cached
        client = self._borrow()
        try:
            index = client.get_model_repository_index(headers=self.headers, as_json=True,
                                                                   client_timeout=self.timeout)
            names = sorted({m["name"] for m in index.get("models", []) if m.get("state") == "READY"})
            configs = [client.get_model_config(n, headers=self.headers, as_json=True,
                                                   client_timeout=self.timeout) for n in names]
        except self._module.InferenceServerException as exc:
            raise map_error(exc) from None
        finally:
            self._give_back(client)
        return self._pipelines.keep(parse_pipelines(index, configs))

    def shadow_report(self, pipeline: str) -> dict[str, Any]:
        raise gateway_only("a shadow report")

    def rollout(self, pipeline: str, action: str, admin_key: str) -> dict[str, Any]:
        raise gateway_only("the rollout admin route")

    def ready(self) -> bool:
        """Asks Triton now (the pipeline cache could be older than Triton's death)."""
        client = self._borrow()
        try:
            return bool(client.is_server_ready(headers=self.headers, client_timeout=min(self.timeout, 5.0)))
        except self._module.InferenceServerException:
            return False
        finally:
            self._give_back(client)

    def classify_batch(self, images: list[Encoded], top_k: int, pipeline: str | None,
                       retrying: Callable[[Callable[[], T]], T]) -> list[Classification | ClientError]:
        """One inference an image, each retried on its own: an image's own fault is its slot's answer."""
        return [image_fault_as_answer(lambda d=data: retrying(lambda: self.classify(d, "", top_k, pipeline, False)))
                for data, _, _ in images]

    def classify(self, data: bytes, kind: str, top_k: int, pipeline: str | None, maps: bool) -> Classification:
        if maps:
            raise maps_unsupported()
        started = time.perf_counter()
        info, tensor, output = prepare_request(self._module, self.catalog(), data, top_k, pipeline)
        # No gRPC deadline: Triton 2.51's Python backend can crash when a running request is cancelled, so on
        # timeout we stop waiting and let the call finish on its own (see docs/client.md).
        finished = threading.Event()
        outcome: list[Any] = []

        client = self._borrow()

        def done(result: Any, error: Any) -> None:
            outcome.append((result, error))
            self._give_back(client)  # only now: a call that timed out here still runs on it
            finished.set()

        try:
            client.async_infer(info.name, [tensor], done, outputs=requested_outputs(self._module, info, output),
                               headers={**(self.headers or {}), **trace_headers()})
        except BaseException:
            self._give_back(client)
            raise
        if not finished.wait(self.timeout):
            raise ClientError(504, "triton_timeout", "Triton did not answer in time")
        result, error = outcome[0]
        if error is not None:
            raise map_error(error)
        return classification(result, info, started)

    def close(self) -> None:
        with self._lock:
            for client in self._clients:
                client.close()
            self._clients.clear()
            self._idle.clear()


class AsyncDirectTransport:
    """The async twin over ``tritonclient.grpc.aio`` (one channel; grpc.aio multiplexes)."""

    def __init__(self, url: str, timeout: float, key: str | None = None) -> None:
        self.url = strip_scheme(url)
        self.timeout = timeout
        self.headers = {GRPC_KEY_HEADER: key} if key else None
        self._module = _import_grpc(aio=True)
        self._error = _import_grpc(aio=False).InferenceServerException
        self._running: set[asyncio.Future[Any]] = set()
        self._client: Any = None
        self._pipelines = PipelineCache()

    def client(self) -> Any:
        if self._client is None:  # created lazily: grpc.aio channels bind to the running loop
            self._client = self._module.InferenceServerClient(self.url)
        return self._client

    async def pipelines(self) -> list[PipelineInfo]:
        return list((await self.catalog()).values())

    async def catalog(self) -> dict[str, PipelineInfo]:
        cached = self._pipelines.fresh()
        if cached is not None:
            return cached
        client = self.client()
        try:
            index = await client.get_model_repository_index(headers=self.headers, as_json=True,
                                                                   client_timeout=self.timeout)
            names = sorted({m["name"] for m in index.get("models", []) if m.get("state") == "READY"})
            configs = [await client.get_model_config(n, headers=self.headers, as_json=True,
                                                   client_timeout=self.timeout) for n in names]
        except self._error as exc:
            raise map_error(exc) from None
        return self._pipelines.keep(parse_pipelines(index, configs))

    async def shadow_report(self, pipeline: str) -> dict[str, Any]:
        raise gateway_only("a shadow report")

    async def rollout(self, pipeline: str, action: str, admin_key: str) -> dict[str, Any]:
        raise gateway_only("the rollout admin route")

    async def ready(self) -> bool:
        try:
            return bool(await self.client().is_server_ready(headers=self.headers,
                                                            client_timeout=min(self.timeout, 5.0)))
        except self._error:
            return False

    async def classify_batch(self, images: list[Encoded], top_k: int, pipeline: str | None,
                             retrying: Callable[[Callable[[], Awaitable[T]]], Awaitable[T]],
                             ) -> list[Classification | ClientError]:
        async def one(data: bytes) -> Classification | ClientError:
            try:
                return await retrying(lambda: self.classify(data, "", top_k, pipeline, False))
            except ClientError as exc:
                if exc.code not in IMAGE_ERROR_CODES:
                    raise
                return exc
        return list(await asyncio.gather(*(one(data) for data, _, _ in images)))

    async def classify(self, data: bytes, kind: str, top_k: int, pipeline: str | None,
                       maps: bool) -> Classification:
        if maps:
            raise maps_unsupported()
        started = time.perf_counter()
        info, tensor, output = prepare_request(self._module, await self.catalog(), data, top_k, pipeline)
        call = asyncio.ensure_future(self.client().infer(
            info.name, [tensor], outputs=requested_outputs(self._module, info, output),
            headers={**(self.headers or {}), **trace_headers()}))
        self._running.add(call)
        call.add_done_callback(self._finished)
        try:  # shielded, never cancelled in Triton (see DirectTransport.classify)
            result = await asyncio.wait_for(asyncio.shield(call), self.timeout)
        except TimeoutError:
            raise ClientError(504, "triton_timeout", "Triton did not answer in time") from None
        except self._error as exc:
            raise map_error(exc) from None
        return classification(result, info, started)

    def _finished(self, call: asyncio.Future[Any]) -> None:
        self._running.discard(call)
        if not call.cancelled():
            call.exception()

    async def close(self) -> None:
        if self._running:
            await asyncio.wait(list(self._running), timeout=10)
        if self._client is not None:
            await self._client.close()
            self._client = None
