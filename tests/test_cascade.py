"""Cascade pipelines on real Triton: the served answer is the stage the rule picks on the reference posteriors, views
are not recomputed, the extremes of τ, a missing second stage, bad input, and the stage through gateway and client."""

from __future__ import annotations

import shutil

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient
from conftest import TESTS, encode, free_port
from support.gateway import metric_value, start_gateway
from support.reference_protocol import pipeline_posterior
from tritonclient.utils import InferenceServerException

from client import Client
from export.checkpoint import load_vgg
from server.cascade_spec import confidence, stops_at
from server.pipeline_spec import SpecError
from server.repository import generate
from server.spec_file import load_spec
from server.triton_launcher import TritonServer

BASE_SPEC = (TESTS / "pipelines.toml").read_text()
BASE = load_spec(TESTS / "pipelines.toml")
TWO_STAGES, THREE_STAGES = ("fast", "fusion"), ("fast", "multiscale", "fusion")


def split_threshold(values: list[float]) -> float:
    """A τ between two of the values, far from both, so that some inputs stop and others escalate."""
    ordered = sorted(values)
    gaps = [(ordered[i + 1] - ordered[i], i) for i in range(len(ordered) - 1)]
    gap, i = max(gaps[len(gaps) // 4: max(len(gaps) // 4 + 1, 3 * len(gaps) // 4)])
    assert gap > 1e-3, f"no usable gap between the confidences {ordered}"
    return (ordered[i] + ordered[i + 1]) / 2


@pytest.fixture(scope="module")
def reference(test_checkpoints, sample_images):
    """Reference posterior of every stage pipeline on every photo: {photo: {pipeline: probs}}."""
    models = {name: load_vgg(path) for name, path in test_checkpoints.items()}
    out = {}
    for photo, data in sample_images.items():
        out[photo] = {}
        for name in ("fast", "multiscale", "fusion"):
            p = BASE.pipelines[name]
            out[photo][name] = pipeline_posterior([models[m] for m in p.members], data, list(p.scales), p.mode,
                                                  p.flips, list(p.weights) or None, p.grid)
    return out


@pytest.fixture(scope="module")
def cascades(reference):
    """name -> (stages, rule, thresholds); the split ones put their τ between the photos' reference confidences."""
    fast_max = split_threshold([confidence(r["fast"], "max") for r in reference.values()])
    fast_margin = split_threshold([confidence(r["fast"], "margin") for r in reference.values()])
    multi_margin = split_threshold([confidence(r["multiscale"], "margin") for r in reference.values()
                                    if confidence(r["fast"], "margin") <= fast_margin])
    return {
        "cascade_split": (TWO_STAGES, "max", (fast_max,)),
        "cascade_three": (THREE_STAGES, "margin", (fast_margin, multi_margin)),
        "cascade_first": (TWO_STAGES, "max", (0.0,)),
        "cascade_last": (TWO_STAGES, "max", (1.0,)),
    }


@pytest.fixture(scope="module")
def served(triton_repository, cascades, tmp_path_factory):
    folder = tmp_path_factory.mktemp("cascade")
    repository = folder / "repository"
    shutil.copytree(triton_repository, repository)
    text = BASE_SPEC
    for name, (stages, rule, thresholds) in cascades.items():
        text += f'\n[pipelines.{name}]\nstages = {list(stages)!r}\nrule = "{rule}"\nthresholds = {list(thresholds)}\n'
    (folder / "spec.toml").write_text(text.replace("'", '"'))
    generate(load_spec(folder / "spec.toml"), repository)
    with TritonServer(repository, free_port(), free_port(), free_port(), log_path=folder / "triton.log",
                      heal=False) as triton:
        yield triton


def infer(triton, pipeline: str, data: bytes, class_count: int = 0) -> httpclient.InferResult:
    client = httpclient.InferenceServerClient(triton.http_url, network_timeout=120)
    image = httpclient.InferInput("image", [1], "BYTES")
    image.set_data_from_numpy(np.array([data], dtype=object))
    outputs = [httpclient.InferRequestedOutput("probs", class_count=class_count)]
    if pipeline.startswith("cascade"):
        outputs += [httpclient.InferRequestedOutput("stage"), httpclient.InferRequestedOutput("stages")]
    return client.infer(pipeline, [image], outputs=outputs)


def names(result: httpclient.InferResult, output: str) -> list[str]:
    return [item.decode() for item in result.as_numpy(output).reshape(-1)]


@pytest.mark.parametrize("cascade", ["cascade_split", "cascade_three"])
def test_cascade_answers_with_the_stage_the_rule_picks_on_the_reference(served, reference, cascades,
                                                                        sample_images, cascade):
    stages, rule, thresholds = cascades[cascade]
    picked = []
    for photo, data in sample_images.items():
        expected_stage = stops_at([reference[photo][s] for s in stages], rule, thresholds)
        result = infer(served, cascade, data)
        assert names(result, "stage") == [stages[expected_stage]], photo
        assert names(result, "stages") == list(stages[:expected_stage + 1]), photo
        difference = np.abs(result.as_numpy("probs") - reference[photo][stages[expected_stage]]).max()
        assert difference <= 1e-4, f"{cascade} on {photo}: max |probs diff| {difference:.2e}"
        picked.append(expected_stage)
    assert 0 in picked and len(stages) - 1 in picked, f"the photos did not exercise both ends: {picked}"


def test_threshold_zero_stops_at_the_first_stage_and_one_runs_every_stage(served, sample_images):
    for data in sample_images.values():
        first, last = infer(served, "cascade_first", data), infer(served, "cascade_last", data)
        assert names(first, "stage") == names(first, "stages") == ["fast"]
        assert names(last, "stage") == ["fusion"] and names(last, "stages") == ["fast", "fusion"]
        assert np.abs(first.as_numpy("probs") - infer(served, "fast", data).as_numpy("probs")).max() <= 1e-6
        assert np.abs(last.as_numpy("probs") - infer(served, "fusion", data).as_numpy("probs")).max() <= 1e-6


def member_runs(triton, model: str) -> int:
    client = httpclient.InferenceServerClient(triton.http_url)
    return sum(int(s["inference_stats"]["success"]["count"])
               for s in client.get_inference_statistics(model)["model_stats"])


def member_rows(triton, model: str) -> int:
    """Images (batch rows) the model has evaluated: Triton counts a request of batch n as n inferences."""
    client = httpclient.InferenceServerClient(triton.http_url)
    return sum(int(s["inference_count"]) for s in client.get_inference_statistics(model)["model_stats"])


def test_a_view_an_earlier_stage_ran_is_not_run_again(served, sample_images):
    """fast = vgg_d at Q=64; fusion = vgg_a, vgg_d, vgg_e at Q=64, 96, 128 with flips: escalating sends vgg_d the
    view at 64 (fast), then only its mirror at 64, and both at 96 and 128: 4 runs, 6 rows instead of 7."""
    data = sample_images["china_500x333.jpg"]
    before = {m: member_runs(served, m) for m in ("vgg_a", "vgg_d", "vgg_e")}
    before_rows = {m: member_rows(served, m) for m in ("vgg_a", "vgg_d", "vgg_e")}
    infer(served, "cascade_last", data)
    after = {m: member_runs(served, m) for m in ("vgg_a", "vgg_d", "vgg_e")}
    after_rows = {m: member_rows(served, m) for m in ("vgg_a", "vgg_d", "vgg_e")}
    assert {m: after[m] - before[m] for m in after} == {"vgg_a": 3, "vgg_d": 4, "vgg_e": 3}
    assert {m: after_rows[m] - before_rows[m] for m in after} == {"vgg_a": 6, "vgg_d": 6, "vgg_e": 6}


def test_a_missing_second_stage_fails_only_the_requests_that_need_it(served, sample_images):
    client = httpclient.InferenceServerClient(served.http_url)
    data = sample_images["china_500x333.jpg"]
    client.unload_model("vgg_e")
    try:
        with pytest.raises(InferenceServerException, match="vgg_e"):
            infer(served, "cascade_last", data)
        assert names(infer(served, "cascade_first", data), "stage") == ["fast"]
    finally:
        client.load_model("vgg_e")
    assert names(infer(served, "cascade_last", data), "stage") == ["fusion"]


@pytest.mark.parametrize(("data", "prefix"), [
    (b"", "[invalid_image]"),
    (b"\x89PNG\r\n\x1a\n not really a png", "[invalid_image]"),
    (encode(np.zeros((8, 8, 3), np.uint8), "PNG"), "[image_too_small]"),
])
def test_bad_input_fails_as_in_every_pipeline(served, data, prefix):
    for pipeline in ("fast", "cascade_split"):
        with pytest.raises(InferenceServerException) as caught:
            infer(served, pipeline, data)
        assert prefix in str(caught.value), (pipeline, str(caught.value))


def test_the_gateway_and_the_client_say_which_stage_answered(served, sample_images, tmp_path_factory):
    data = sample_images["china_500x333.jpg"]
    gateway = start_gateway(tmp_path_factory, [served.http_url], wait_ready=True)
    try:
        body = httpx.post(f"{gateway.url}/v1/classify?pipeline=cascade_last&top_k=3",
                          files={"file": ("china.jpg", data, "image/jpeg")}, timeout=60).json()
        assert body["stage"] == "fusion" and body["stages"] == ["fast", "fusion"]
        assert len(body["predictions"]) == 3 and set(body["models"]) == {"vgg_a", "vgg_d", "vgg_e"}
        plain = httpx.post(f"{gateway.url}/v1/classify?pipeline=fast",
                           files={"file": ("china.jpg", data, "image/jpeg")}, timeout=60).json()
        assert "stage" not in plain
        listed = {p["name"]: p for p in httpx.get(f"{gateway.url}/v1/pipelines", timeout=10).json()["pipelines"]}
        assert listed["cascade_split"]["mode"] == "cascade"
        with Client(gateway.url) as client:
            assert client.classify(data, pipeline="cascade_first").stage == "fast"
        assert metric_value(gateway.url, "vgg_gateway_cascade_answers_total", pipeline="cascade_last",
                            stage="fusion") == 1
        assert metric_value(gateway.url, "vgg_gateway_cascade_answers_total", pipeline="cascade_first",
                            stage="fast") == 1
    finally:
        gateway.stop()
    with Client(f"grpc://{served.grpc_url}") as direct:
        answer = direct.classify(data, pipeline="cascade_last")
        assert (answer.stage, answer.stages) == ("fusion", ("fast", "fusion"))
        assert direct.classify(data, pipeline="fast").stage is None


BAD_CASCADES = {
    "unknown stage": ('stages = ["fast", "nope"]\nthresholds = [0.5]\n', "stage 'nope' is not a plain pipeline"),
    "one stage": ('stages = ["fast"]\nthresholds = []\n', "stages must list at least two pipelines"),
    "thresholds count": ('stages = ["fast", "fusion"]\nthresholds = [0.5, 0.6]\n',
                         "thresholds must be a list of 1 number(s)"),
    "threshold range": ('stages = ["fast", "fusion"]\nthresholds = [1.5]\n', "between 0 and 1, got [1.5]"),
    "rule": ('stages = ["fast", "fusion"]\nthresholds = [0.5]\nrule = "entropy"\n', "rule 'entropy' is not one of"),
    "unknown key": ('stages = ["fast", "fusion"]\nthresholds = [0.5]\nscales = [64]\n', "unknown key 'scales'"),
    "repeated stage": ('stages = ["fast", "fast"]\nthresholds = [0.5]\n', "stages name a pipeline twice"),
    "cascade as stage": ('stages = ["fast", "c0"]\nthresholds = [0.5]\n', "stage 'c0' is not a plain pipeline"),
}


@pytest.mark.parametrize("case", list(BAD_CASCADES))
def test_bad_cascade_specs_are_refused_with_the_field_named(tmp_path, case):
    table, message = BAD_CASCADES[case]
    path = tmp_path / "spec.toml"
    path.write_text(BASE_SPEC + '\n[pipelines.c0]\nstages = ["fast", "fusion"]\nthresholds = [0.5]\n'
                    + f"\n[pipelines.bad]\n{table}")
    with pytest.raises(SpecError, match=r"pipelines\.bad: ") as caught:
        load_spec(path)
    assert message in str(caught.value)
