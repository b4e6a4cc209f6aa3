"""``python -m client``: score a folder into CSV/JSONL (resumable), classify one image, list pipelines, and a
pipeline's rollout: its shadow report, its canary promoted or rolled back."""

from __future__ import annotations

import argparse
import glob
import json
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from client.errors import ClientError
from client.images import IMAGE_SUFFIXES
from client.inputs import check_options, iter_paths
from client.progress import Progress
from client.result_files import open_result_file
from client.sync_client import DEFAULT_URL, Client

EXIT_OK, EXIT_FILE_ERRORS, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
# A job stops once this many files in a row (or twice the concurrency, if more) failed for the service's sake,
# each after its retries: the service is down, and scoring on would only write rows that a re-run redoes.
MIN_FAILED_IN_A_ROW = 8


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m client", description="vgg-serve client")
    parser.add_argument("--url", default=os.environ.get("VGG_URL", DEFAULT_URL),
                        help="gateway URL, or grpc://HOST:PORT for direct-to-Triton mode (env VGG_URL)")
    parser.add_argument("--api-key", default=os.environ.get("VGG_API_KEY"), help="bearer token (env VGG_API_KEY)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    commands = parser.add_subparsers(dest="command", required=True)

    score = commands.add_parser("score", help="classify many images into a CSV or JSONL file (resumable)")
    score.add_argument("inputs", nargs="+", help="directories, globs, .txt lists of paths, or image paths")
    score.add_argument("-o", "--output", required=True, help="result file: .csv, .jsonl or .parquet (needs pyarrow)")
    score.add_argument("--pipeline", help="pipeline name (default: the server's default)")
    score.add_argument("--top-k", type=int, default=5)
    score.add_argument("--concurrency", type=int, default=8, help="requests in flight (with --ray: per actor)")
    score.add_argument("--overwrite", action="store_true", help="start over instead of resuming")
    score.add_argument("--progress", dest="progress", action="store_true", default=None,
                       help="force the progress bar (default: only on a terminal)")
    score.add_argument("--no-progress", dest="progress", action="store_false")
    score.add_argument("--ray", action="store_true",
                       help="score on Ray Data: an actor pool, one client per actor (pip install './client[ray]')")
    score.add_argument("--ray-address", help="a running Ray cluster (HOST:PORT, ray://HOST:PORT or auto); "
                       "default: start a single-node one here")
    score.add_argument("--ray-actors", type=int, help="actors in the pool (default: one per alive node)")

    classify = commands.add_parser("classify", help="classify one image and print JSON")
    classify.add_argument("image")
    classify.add_argument("--pipeline")
    classify.add_argument("--top-k", type=int, default=5)

    commands.add_parser("pipelines", help="list the served pipelines as JSON")

    shadow = commands.add_parser("shadow", help="print a pipeline's shadow comparisons as JSON")
    shadow.add_argument("pipeline")
    rollout = commands.add_parser("rollout", help="promote, roll back or resume a pipeline's canary (admin key)")
    rollout.add_argument("pipeline")
    action = rollout.add_mutually_exclusive_group(required=True)
    for name in ("promote", "rollback", "resume"):
        action.add_argument(f"--{name}", dest="action", action="store_const", const=name)
    rollout.add_argument("--admin-key", default=os.environ.get("VGG_ADMIN_KEY"),
                         help="the gateway's admin key (env VGG_ADMIN_KEY)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        client = Client(args.url, api_key=args.api_key, timeout=args.timeout)
    except ImportError as exc:
        print(f"client: {exc}", file=sys.stderr)
        return EXIT_USAGE
    with client:
        try:
            if args.command == "score":
                return score(client, args)
            if args.command == "classify":
                result = client.classify(args.image, top_k=args.top_k, pipeline=args.pipeline)
                print(json.dumps(asdict(result), indent=2))
            elif args.command == "shadow":
                print(json.dumps(client.shadow_report(args.pipeline), indent=2))
            elif args.command == "rollout":
                if not args.admin_key:
                    print("client: rollout needs --admin-key (or VGG_ADMIN_KEY)", file=sys.stderr)
                    return EXIT_USAGE
                print(json.dumps(client.rollout(args.pipeline, args.action, args.admin_key), indent=2))
            else:
                print(json.dumps([asdict(p) for p in client.pipelines()], indent=2))
        except (ClientError, OSError) as exc:
            print(f"client: {exc}", file=sys.stderr)
            return EXIT_USAGE
        except KeyboardInterrupt:  # before or between jobs; a running job handles its own
            print("client: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
    return EXIT_OK


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


class UsageError(Exception):
    """The job cannot start as asked: a typo'd input, an unusable output file, a service that can't serve it."""


def check_inputs(inputs: Sequence[str]) -> list[str]:
    """The image paths the command line names; UsageError for an argument that names nothing (a mistyped folder
    or a glob matching no file) or when all of them together hold no image. Missing paths inside a list file are
    still scored, as error rows."""
    for item in inputs:
        if not Path(item).exists() and not (glob.has_magic(item) and glob.glob(item, recursive=True)):
            raise UsageError(f"{item}: {'no file matches' if glob.has_magic(item) else 'no such file or directory'}")
    paths = list(iter_paths(inputs))
    if not paths:
        suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
        raise UsageError(f"no image files in {', '.join(inputs)} (looked for {suffixes})")
    return paths


def check_service(client: Client, pipeline: str | None) -> None:
    """Fail before the first file, not with one error row per file: the service answers, the key is accepted,
    and the pipeline asked for is served."""
    try:
        served = [info.name for info in client.pipelines()]
    except ClientError as exc:
        raise UsageError(f"cannot use {client.url}: {exc}") from None
    if pipeline is not None and pipeline not in served:
        raise UsageError(f"unknown pipeline {pipeline!r}; served: {', '.join(served) or 'none'}")


def score(client: Client, args: argparse.Namespace) -> int:
    """Run a resumable scoring job; every finished file is on disk before the next one is reported."""
    ray_job = None
    try:
        check_options(args.top_k, args.concurrency)
        output = open_result_file(args.output)
        if args.ray:
            from client import ray_score

            ray_score.require_ray()
            paths = ray_score.list_sources(args.inputs, check_inputs)
        else:
            paths = check_inputs(args.inputs)
        check_service(client, args.pipeline)
        if args.ray:
            ray_job = ray_score.RayJob(args.ray_address, args.ray_actors)
        if args.overwrite:
            output.discard()
        done = output.resume()
    except (UsageError, ValueError, OSError, ImportError) as exc:
        if ray_job is not None:
            ray_job.close()
        print(f"client: {exc}", file=sys.stderr)
        return EXIT_USAGE
    todo = [path for path in paths if path not in done]
    enabled = sys.stderr.isatty() if args.progress is None else args.progress
    progress = Progress(len(todo), enabled)
    outcomes: Counter[str] = Counter()
    previous = signal.signal(signal.SIGTERM, _interrupt)
    started = time.monotonic()
    interrupted = lost = False
    in_flight = args.concurrency * (ray_job.actors if ray_job else 1)
    give_up_after = max(MIN_FAILED_IN_A_ROW, 2 * in_flight)
    failed_in_a_row = 0
    if ray_job is not None:
        results = ray_job.score(todo, ray_score.settings_for(client, args))
    else:
        results = client.score(todo, concurrency=args.concurrency, top_k=args.top_k, pipeline=args.pipeline)
    try:
        for result in results:
            output.append(result)
            outcomes["ok" if result.ok else result.error.code] += 1
            progress.update(result.ok)
            failed_in_a_row = failed_in_a_row + 1 if not result.ok and result.error.retryable else 0
            if failed_in_a_row >= give_up_after:
                lost = True
                break
    except KeyboardInterrupt:
        interrupted = True
    finally:
        signal.signal(signal.SIGTERM, previous)
        progress.close()
        output.close()
        if ray_job is not None:
            ray_job.close()
    if not (interrupted or lost):
        output.finalize()
    elapsed = time.monotonic() - started
    scored = sum(outcomes.values())
    errors = scored - outcomes["ok"]
    detail = ", ".join(f"{code}: {n}" for code, n in sorted(outcomes.items()) if code != "ok")
    state = "interrupted" if interrupted else "stopped" if lost else "done"
    print(f"{state}: {scored} of {len(todo)} files in {elapsed:.1f} s "
          f"({scored / max(elapsed, 1e-9):.1f} img/s); ok {outcomes['ok']}, errors {errors}"
          f"{f' ({detail})' if detail else ''}; skipped {len(done)} already in {output.path}", file=sys.stderr)
    if lost:
        print(f"client: the service failed the last {failed_in_a_row} files in a row (each retried); "
              "re-run the same command to resume once it is back", file=sys.stderr)
        return EXIT_USAGE
    if interrupted:
        print("re-run the same command to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_FILE_ERRORS if errors else EXIT_OK
