"""A cascade against its own stages, side by side in one run: top-1 error, compute per image, share answered per
stage, and served images/s; and a check that every served answer is the stage the rule picks.

    python -m bench.cascade_bench --data data/digits/test            # the spec's first cascade, its calibrated τ

The stage pipelines and the cascade are served from a scratch repository linking the exported members (generated
by the project's own tool from --spec). GMAC per image are counted from the views each request actually ran (the
cascade's `stages` output), at each image's own size. Images/s: --clients concurrent clients sending Triton's HTTP
endpoint the gateway's own request, the first --speed-images test images once per client and pipeline, two rounds
in opposite order.
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient

from bench.accuracy import EvaluationError, image_folder
from bench.cascade import ROOT, MacCounter, resolved_cascade, serve_stages, stage_costs, stage_posteriors
from bench.common import free_port, machine, publish
from client.contract import CASCADE_OUTPUTS, INPUT, PROBS
from server.cascade_spec import Cascade, stops_at
from server.gateway.triton_http import classification_request
from server.pipeline_spec import Spec, SpecError
from server.repository import read_member
from server.spec_file import load_spec
from server.triton_launcher import LaunchError, TritonServer
from vgg.imaging import ImageLimits, decode_rgb


def cascade_answers(url: str, name: str, paths: list[Path], workers: int) -> tuple[np.ndarray, list[list[str]]]:
    """The served cascade's full posteriors [images, classes] and the stages each image ran."""
    client = grpcclient.InferenceServerClient(url)
    outputs = [grpcclient.InferRequestedOutput(n) for n in (PROBS, *CASCADE_OUTPUTS)]

    def one(path: Path) -> tuple[np.ndarray, list[str]]:
        tensor = grpcclient.InferInput(INPUT, [1], "BYTES")
        tensor.set_data_from_numpy(np.array([path.read_bytes()], dtype=np.object_))
        result = client.infer(name, [tensor], outputs=outputs)
        return result.as_numpy(PROBS), [s.decode() for s in result.as_numpy("stages").reshape(-1)]

    with ThreadPoolExecutor(max_workers=workers) as pool:
        answers = list(pool.map(one, paths))
    return np.stack([a for a, _ in answers]), [s for _, s in answers]


def images_per_s(url: str, pipeline: str, bodies: list[bytes], clients: int, extra: tuple[str, ...]) -> float:
    """`clients` keep-alive connections, each sending every image once, next request when the last returned."""
    host, _, port = url.rpartition(":")
    requests = []
    for data in bodies:
        body, header_length = classification_request(INPUT, PROBS, data, 5, extra)
        requests.append((body, {"content-type": "application/octet-stream",
                                "inference-header-content-length": str(header_length)}))

    def client(offset: int) -> None:
        connection = http.client.HTTPConnection(host, int(port), timeout=300)
        for i in range(len(requests)):
            body, headers = requests[(i + offset * 7) % len(requests)]
            connection.request("POST", f"/v2/models/{pipeline}/infer", body=body, headers=headers)
            response = connection.getresponse()
            payload = response.read()
            if response.status != 200:
                raise RuntimeError(f"{pipeline} answered {response.status}: {payload[:200]!r}")
        connection.close()

    with ThreadPoolExecutor(clients) as pool:
        start = time.perf_counter()
        list(pool.map(client, range(clients)))
        elapsed = time.perf_counter() - start
    return clients * len(requests) / elapsed


def run(cascade: Cascade, spec_limits: dict, repository: Path, data: Path, clients: int, speed_images: int,
        folder: Path) -> str:
    labels = read_member(repository, cascade.members[0]).labels
    samples = image_folder(data, labels.read_text().split() if labels else [])
    paths, truth = [p for p, _ in samples], np.array([label for _, label in samples])
    limits = ImageLimits(**spec_limits)
    counter = MacCounter(repository)
    costs = np.array([stage_costs(cascade, decode_rgb(p.read_bytes(), limits).size, counter) for p in paths])
    scratch = serve_stages(cascade, Spec(limits=spec_limits), repository, folder)
    bodies = [p.read_bytes() for p in paths[::max(1, len(paths) // speed_images)][:speed_images]]
    with TritonServer(scratch, free_port(), free_port(), free_port(), log_path=folder / "triton.log") as server:
        stage_probs = stage_posteriors(server.grpc_url, list(cascade.stages), paths, clients)
        cascade_probs, ran = cascade_answers(server.grpc_url, cascade.name, paths, clients)
        order = [*cascade.stages, cascade.name]
        speed: dict[str, list[float]] = {name: [] for name in order}
        for round_order in (order, order[::-1]):
            for name in round_order:
                extra = CASCADE_OUTPUTS if name == cascade.name else ()
                speed[name].append(images_per_s(server.http_url, name, bodies, clients, extra))
    picked = [stops_at([p[i] for p in stage_probs], cascade.rule, cascade.thresholds) for i in range(len(paths))]
    stopped = [len(r) - 1 for r in ran]
    same_stage = sum(a == b for a, b in zip(picked, stopped, strict=True))
    worst = max(float(np.abs(cascade_probs[i] - stage_probs[s][i]).max()) for i, s in enumerate(stopped))
    error = {name: 100 * float(np.mean(p.argmax(axis=1) != truth)) for name, p in zip(cascade.stages, stage_probs,
                                                                                         strict=True)}
    error[cascade.name] = 100 * float(np.mean(cascade_probs.argmax(axis=1) != truth))
    gmac = {name: float(np.mean(costs[:, i])) if i == 0 else _alone(cascade, i, costs, paths, limits, counter)
            for i, name in enumerate(cascade.stages)}
    gmac[cascade.name] = float(np.mean(costs[np.arange(len(paths)), stopped]))
    shares = [100 * float(np.mean(np.array(stopped) == s)) for s in range(len(cascade.stages))]
    last = cascade.stages[-1]
    lines = [
        f"# Cascade benchmark, {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC", "",
        f"Machine: {machine()}.", "",
        f"`{cascade.name}`: {' -> '.join(cascade.stages)}, rule `{cascade.rule}`, thresholds "
        f"{list(cascade.thresholds)}; {len(paths)} images of {data}; images/s with {clients} concurrent clients "
        f"on {len(bodies)} of them (two rounds, opposite order; the clients share the cores with Triton).", "",
        "| pipeline | top-1 err % | GMAC/image | % of last stage's GMAC | answered per stage % | images/s |",
        "|---|---:|---:|---:|---|---|"]
    for name in order:
        share = ", ".join(f"{s} {v:.1f}" for s, v in zip(cascade.stages, shares, strict=True)) \
            if name == cascade.name else ""
        lines.append(f"| `{name}` | {error[name]:.2f} | {gmac[name]:.4f} | {100 * gmac[name] / gmac[last]:.1f} | "
                     f"{share} | {' / '.join(f'{v:.1f}' for v in speed[name])} |")
    lines += ["", f"Against the goals: error {error[cascade.name] - error[last]:+.2f} points from `{last}` "
              "(goal: within 0.3), "
              f"{100 * gmac[cascade.name] / gmac[last]:.1f}% of its compute (goal: ≤ 35%), "
              f"{shares[0]:.1f}% answered by the first stage (goal: ≥ 75%), served at "
              + " / ".join(f"{c / f:.2f}x" for c, f in zip(speed[cascade.name], speed[last], strict=True))
              + f" `{last}`'s images/s (goal: never slower).",
              f"Served answers vs the rule on the stages' served posteriors: {same_stage} of {len(paths)} stopped at "
              f"the stage the rule picks; max |cascade probs - that stage's probs| = {worst:.2e} (goal ≤ 1e-4)."]
    return "\n".join(lines) + "\n"


def _alone(cascade: Cascade, index: int, costs: np.ndarray, paths: list[Path], limits: ImageLimits,
           counter: MacCounter) -> float:
    """Mean GMAC of stage `index` run on its own (no view reused from the stages before it)."""
    alone = Cascade(cascade.name, (cascade.stages[index],), (), cascade.rule, cascade.instances, "",
                    (cascade.stage_pipelines[index],))
    return float(np.mean([stage_costs(alone, decode_rgb(p.read_bytes(), limits).size, counter)[0] for p in paths]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cascade_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="held-out ImageFolder (the test split)")
    parser.add_argument("--spec", type=Path, default=ROOT / "pipelines.toml")
    parser.add_argument("--cascade", help="the cascade to measure (default: the spec's first)")
    parser.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--speed-images", type=int, default=100, help="images per client for images/s")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "cascade.md")
    args = parser.parse_args(argv)
    try:
        if args.clients < 1 or args.speed_images < 1:
            raise EvaluationError("--clients and --speed-images must be at least 1")
        spec = load_spec(args.spec)
        cascade = resolved_cascade(spec, args.cascade, args.repository)
        with tempfile.TemporaryDirectory() as folder:
            report = run(cascade, spec.limits, args.repository, args.data, args.clients, args.speed_images,
                         Path(folder))
    except (EvaluationError, SpecError, LaunchError) as exc:
        print(f"cascade_bench: error: {exc}", file=sys.stderr)
        return 1
    publish(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
