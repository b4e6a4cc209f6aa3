"""Batch scoring on Ray Data: the job of ``client score``, spread over an actor pool on a Ray cluster.

Each actor holds one ``Client`` (to the gateway, or straight to Triton) and keeps ``concurrency`` requests in
flight from a thread pool, like the plain client does; the actors read the encoded bytes themselves (local paths,
or any URI pyarrow's filesystems open: s3://, gs://, hdfs://, file://), so image bytes never cross Ray's object
store: a block carries paths in and one small JSON row per image out. The driver writes the rows with the same
``ResultFile`` as the plain client, so resuming, the columns and the final sort are the same. Ray and pyarrow are
imported only here, and only when a job asks for them (``pip install './client[ray]'``).
"""

from __future__ import annotations

import json
import logging
import math
import socket
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from client.errors import ClientError
from client.images import IMAGE_SUFFIXES
from client.output import result_row
from client.results import Classification, Prediction, ScoreResult

MISSING_RAY = "--ray needs Ray Data: pip install './client[ray]' (ray[data] and pyarrow)"
# Actors only wait on the service: a quarter CPU each leaves the cluster's CPUs to Ray Data's own tasks (a pool of
# 1-CPU actors on a 2-CPU node starves them and the dataset stalls).
ACTOR_CPUS = 0.25
# Rows per block handed to an actor: enough for its thread pool to stay busy between blocks.
BATCHES_PER_THREAD = 4
# Blocks one actor works on at once: with two, the next block's requests fill the thread pool while the last ones
# of the block before are still out, instead of the pool draining at every block's end.
CALLS_PER_ACTOR = 2


def require_ray() -> Any:
    try:
        import pyarrow  # noqa: F401 - checked here, used by Ray Data and the actors' URI reads
        import ray
        import ray.data
    except ImportError:
        raise ImportError(MISSING_RAY) from None
    return ray


def is_uri(item: str) -> bool:
    return "://" in item


def list_sources(inputs: Sequence[str], list_local: Callable[[Sequence[str]], list[str]]) -> list[str]:
    """Every image the inputs name: local ones as ``list_local`` (the plain client's rules) lists them, URIs
    through pyarrow's filesystems, recursively, image suffixes only, sorted. FileNotFoundError for a URI that
    names nothing."""
    local = [item for item in inputs if not is_uri(item)]
    sources = list_local(local) if local else []
    for uri in (item for item in inputs if is_uri(item)):
        sources.extend(_list_uri(uri))
    if not sources:
        raise FileNotFoundError(f"no image files in {', '.join(inputs)}")
    return list(dict.fromkeys(sources))


def _list_uri(uri: str) -> list[str]:
    from pyarrow import fs

    try:
        filesystem, root = fs.FileSystem.from_uri(uri)
        info = filesystem.get_file_info(root)
    except (OSError, ValueError) as exc:
        raise FileNotFoundError(f"{uri}: {exc}") from None
    if info.type == fs.FileType.NotFound:
        raise FileNotFoundError(f"{uri}: no such file or directory")
    if info.type == fs.FileType.File:
        return [uri]
    prefix = uri[: len(uri) - len(uri.split("://", 1)[1])]  # "s3://", "file://"
    found = filesystem.get_file_info(fs.FileSelector(root, recursive=True))
    paths = sorted(f.path for f in found if f.type == fs.FileType.File and _suffix(f.path) in IMAGE_SUFFIXES)
    if not paths:
        raise FileNotFoundError(f"no image files in {uri}")
    return [prefix + path for path in paths]


def _suffix(path: str) -> str:
    name = path.rsplit("/", 1)[-1]
    return "." + name.rsplit(".", 1)[-1].lower() if "." in name else ""


@dataclass(frozen=True)
class ScoringSettings:
    """What every actor needs to build its client and score: plain values, so they pickle to any node."""

    url: str
    api_key: str | None
    timeout: float
    triton_key: str | None
    top_k: int
    pipeline: str | None
    concurrency: int


class Scorer:
    """One Ray actor: one client, ``concurrency`` requests in flight, one JSON row out per path in."""

    def __init__(self, settings: ScoringSettings) -> None:
        from client.sync_client import Client

        self.settings = settings
        self.client = Client(settings.url, api_key=settings.api_key, timeout=settings.timeout,
                             max_connections=settings.concurrency, triton_key=settings.triton_key)
        self.pool = ThreadPoolExecutor(max_workers=settings.concurrency, thread_name_prefix="ray-score")
        self.filesystems: dict[str, Any] = {}

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[str]]:
        rows = self.pool.map(self.row, list(batch["path"]))
        return {"row": [json.dumps(row, sort_keys=True) for row in rows]}

    def row(self, source: str) -> dict[str, Any]:
        return result_row(self.score_one(source))

    def score_one(self, source: str) -> ScoreResult:
        try:
            data = self.read(source)
        except OSError as exc:
            return ScoreResult(source, error=ClientError(0, "read_error", f"{exc.strerror or exc}"))
        try:
            return ScoreResult(source, classification=self.client.classify(data, self.settings.top_k,
                                                                           self.settings.pipeline))
        except ClientError as exc:
            return ScoreResult(source, error=exc)

    def read(self, source: str) -> bytes:
        if not is_uri(source):
            with open(source, "rb") as handle:
                return handle.read()
        from pyarrow import fs

        scheme, path = source.split("://", 1)  # s3://bucket/key -> bucket/key, file:///tmp/x -> /tmp/x
        try:
            if scheme not in self.filesystems:
                self.filesystems[scheme] = fs.FileSystem.from_uri(source)[0]
            with self.filesystems[scheme].open_input_stream(path) as stream:
                return stream.read()
        except (OSError, ValueError) as exc:
            raise OSError(str(exc)) from None


def result_from_row(row: dict[str, Any]) -> ScoreResult:
    """The ScoreResult an actor's row stands for (the inverse of ``result_row``)."""
    if row["status"] == "ok":
        predictions = tuple(Prediction(p["label"], int(p["index"]), float(p["score"])) for p in row["predictions"])
        return ScoreResult(row["path"], classification=Classification(
            predictions, row["pipeline"], dict(row["models"]), request_id=row.get("request_id")))
    return ScoreResult(row["path"], error=ClientError(int(row["error_status"]), row["error_code"],
                                                      row["error_message"], request_id=row.get("request_id")))


class RayJob:
    """A connection to a Ray cluster (a new single-node one when no address is given) that scores sources."""

    def __init__(self, address: str | None = None, actors: int | None = None) -> None:
        self.ray = require_ray()
        if actors is not None and actors < 1:
            raise ValueError(f"--ray-actors must be at least 1, got {actors}")
        if address and address != "auto":
            check_reachable(address)
        try:
            self.ray.init(address=address or "local", logging_level=logging.ERROR, log_to_driver=False,
                          include_dashboard=False, configure_logging=True)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise ConnectionError(f"cannot use the Ray cluster at {address or 'a new local cluster'}: "
                                  f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
        logging.getLogger("ray.data").setLevel(logging.ERROR)  # its per-dataset INFO lines would bury the summary
        context = self.ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        context.print_on_execution_start = False
        self.actors = actors or self.default_actors()
        self.calls_per_actor = CALLS_PER_ACTOR

    def default_actors(self) -> int:
        """One actor per alive node: each holds one client with its own connection pool and thread pool, so the
        requests in flight grow with the cluster (actors x concurrency)."""
        return max(1, sum(1 for node in self.ray.nodes() if node.get("Alive")))

    def score(self, sources: Sequence[str], settings: ScoringSettings) -> Iterator[ScoreResult]:
        """Results as the actors finish their blocks, in no particular order."""
        return (result_from_row(row) for row in self.rows(sources, settings))

    def rows(self, sources: Sequence[str], settings: ScoringSettings,
             scorer: type[Scorer] = Scorer) -> Iterator[dict[str, Any]]:
        """The actors' rows (``result_row``'s records), as the blocks come back."""
        if not sources:
            return
        rows_per_block = max(1, settings.concurrency * BATCHES_PER_THREAD)
        blocks = math.ceil(len(sources) / rows_per_block)
        dataset = self.ray.data.from_items([{"path": source} for source in sources], override_num_blocks=blocks)
        scored = dataset.map_batches(scorer, fn_constructor_args=(settings,), batch_size=rows_per_block,
                                     compute=self.pool(), num_cpus=ACTOR_CPUS)
        for batch in scored.iter_batches(batch_size=None, batch_format="pyarrow"):
            for row in batch.column("row").to_pylist():
                yield json.loads(row)

    def pool(self) -> Any:
        overlap = self.calls_per_actor > 1
        return self.ray.data.ActorPoolStrategy(size=self.actors, max_concurrent_calls_per_actor=self.calls_per_actor,
                                               max_tasks_in_flight_per_actor=self.calls_per_actor + 1,
                                               enable_true_multi_threading=overlap)

    def close(self) -> None:
        self.ray.shutdown()


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail in seconds with one line, not after Ray's own minute of retries, when nothing listens there."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--ray-address must be HOST:PORT, ray://HOST:PORT or auto, got {address!r}")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise ConnectionError(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}") from None


def settings_for(client: Any, args: Any) -> ScoringSettings:
    """The CLI's options as the actors need them; the Triton key read here, where its file or variable is."""
    from client._core import is_direct
    from client._direct import read_triton_key

    triton_key = read_triton_key(None) if is_direct(client.url) else None
    return ScoringSettings(client.url, args.api_key, args.timeout, triton_key, args.top_k, args.pipeline,
                           args.concurrency)
