"""Rollouts on live traffic through a real gateway and Triton: a shadow's counts equal the agreement computed
offline from the two pipelines' own answers, with exactly the disagreeing requests logged; a canary answers its
share, sticky per key; a canary whose member fails is rolled back within its window while every client request is
answered; the admin route and the client's CLI; rollouts a repository can't honour are refused at generation."""

from __future__ import annotations

import json
import shutil
import threading
import time
import urllib.request
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient
from conftest import TESTS, free_port, make_checkpoint
from support.gateway import metric_value, start_gateway

from client import Client
from client.cli import main as client_main
from export.to_onnx import main as export_main
from server.pipeline_spec import SpecError
from server.repository import generate
from server.repository.cli import main as repository_main
from server.spec_file import load_spec
from server.triton_launcher import TritonServer
from train.demo_data import build as build_digits

pytestmark = pytest.mark.integration
ADMIN_KEY = "rollout-admin-key-0123"
SPEC = """
[limits]
min_side = 16

[pipelines.shadowed]
members = ["vgg_d"]
scales = [64]

[pipelines.shadowed.shadow]
pipeline = "candidate"
fraction = 1.0
keep_images_mb = 1

[pipelines.candidate]
members = ["vgg_d"]
scales = [64]
flips = true

[pipelines.split]
members = ["vgg_d"]
scales = [64]

[pipelines.split.canary]
pipeline = "split_v2"
weight = 0.3

[pipelines.split_v2]
members = ["vgg_d"]
scales = [96]

[pipelines.guarded]
members = ["vgg_d"]
scales = [64]

[pipelines.guarded.canary]
pipeline = "guarded_v2"
weight = 0.5
max_error_rate = 0.2
window = 10
min_requests = 5

[pipelines.guarded_v2]
members = ["vgg_a"]
scales = [64]
"""


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """Held-out demo digits: the test split of train.demo_data, 3 per class."""
    folder = tmp_path_factory.mktemp("digits")
    build_digits(folder, per_class_train=0, per_class_val=0, per_class_test=3)
    return sorted((folder / "test").rglob("*.png"))


@pytest.fixture(scope="module")
def rolled(triton_repository, tmp_path_factory):
    folder = tmp_path_factory.mktemp("rollouts")
    repository = folder / "repository"
    shutil.copytree(triton_repository, repository)
    (folder / "spec.toml").write_text(SPEC)
    generate(load_spec(folder / "spec.toml"), repository)
    with TritonServer(repository, free_port(), free_port(), free_port(), log_path=folder / "triton.log",
                      heal=False) as triton:
        gateway = start_gateway(tmp_path_factory, [triton.http_url], "--admin-key", ADMIN_KEY, "--shadow-log",
                                str(folder / "shadow" / "disagreements.jsonl"), "--catalog-refresh-s", "1",
                                wait_ready=True)
        yield triton, gateway, folder
        gateway.stop()


def classify(gateway, data: bytes, pipeline: str, **headers: str) -> httpx.Response:
    return httpx.post(gateway.url + "/v1/classify", params={"pipeline": pipeline, "top_k": 3}, content=data,
                      headers={"content-type": "image/png", **headers}, timeout=60)


def wait_for_shadow(gateway, name: str, count: int) -> dict:
    deadline = time.monotonic() + 60
    while True:
        report = httpx.get(f"{gateway.url}/v1/pipelines/{name}/shadow", timeout=10).json()
        done = report["since_start"]
        if done["compared"] + done["errors"] + done["dropped"] >= count or time.monotonic() > deadline:
            return report
        time.sleep(0.1)


def top1(triton, pipeline: str, data: bytes) -> int:
    client = httpclient.InferenceServerClient(triton.http_url, network_timeout=60)
    image = httpclient.InferInput("image", [1], "BYTES")
    image.set_data_from_numpy(np.array([data], dtype=object))
    result = client.infer(pipeline, [image], outputs=[httpclient.InferRequestedOutput("probs")])
    return int(np.argmax(result.as_numpy("probs")))


def test_the_shadow_s_counts_equal_the_agreement_computed_offline(rolled, digits):
    triton, gateway, folder = rolled
    disagreeing, top1_agreements = set(), 0
    for index, path in enumerate(digits):
        data = path.read_bytes()
        answer = classify(gateway, data, "shadowed", **{"X-Request-ID": f"digit-{index}"})
        assert answer.status_code == 200 and len(answer.json()["predictions"]) == 3  # the caller's top_k, unchanged
        assert answer.json()["pipeline"] == "shadowed"
        # offline: each pipeline's own answer for the same image, asked of Triton directly
        if top1(triton, "shadowed", data) == top1(triton, "candidate", data):
            top1_agreements += 1
        else:
            disagreeing.add(f"digit-{index}")
    report = wait_for_shadow(gateway, "shadowed", len(digits))
    since = report["since_start"]
    assert (since["compared"], since["errors"], since["dropped"]) == (len(digits), 0, 0)
    assert since["top1_agreements"] == top1_agreements
    assert report["window"]["compared"] == len(digits) and report["window"]["latency_ratio"] > 0
    assert report["candidate"] == "candidate" and report["fraction"] == 1.0
    assert 0 < len(disagreeing) < len(digits), "the two nets should agree on some digits and not on others"
    logged = [json.loads(line) for line in (folder / "shadow" / "disagreements.jsonl").read_text().splitlines()]
    assert {entry["request_id"] for entry in logged if entry["request_id"].startswith("digit-")} == disagreeing
    first = next(entry for entry in logged if entry["request_id"] in disagreeing)
    assert first["top_k"][0]["index"] != first["candidate_top_k"][0]["index"]
    assert Path(first["image"]).read_bytes() == digits[int(first["request_id"].split("-")[1])].read_bytes()
    assert metric_value(gateway.url, "vgg_gateway_shadow_top1_agreements_total", pipeline="shadowed",
                        candidate="candidate") == top1_agreements


def test_a_canary_answers_its_share_sticky_per_key(rolled, digits):
    _, gateway, _ = rolled
    data = digits[0].read_bytes()
    answered = [classify(gateway, data, "split", **{"X-Rollout-Key": f"caller-{i}"}).json()["pipeline"]
                for i in range(200)]
    assert set(answered) == {"split", "split_v2"}
    share = answered.count("split_v2") / len(answered)
    assert 0.2 < share < 0.4  # weight 0.3: the binomial sd over 200 keys is 3.2 points
    for i in range(5):  # the same key, the same side
        sides = {classify(gateway, data, "split", **{"X-Rollout-Key": f"caller-{i}"}).json()["pipeline"]
                 for _ in range(4)}
        assert sides == {answered[i]}
    listed = {p["name"]: p for p in httpx.get(gateway.url + "/v1/pipelines", timeout=10).json()["pipelines"]}
    assert listed["split"]["rollout"]["canary"]["weight"] == 0.3
    assert listed["split"]["rollout"]["canary"]["state"] == "active"


def test_a_failing_canary_is_rolled_back_within_its_window_and_no_client_sees_a_failure(rolled, digits):
    triton, gateway, _ = rolled
    request = urllib.request.Request(f"http://{triton.http_url}/v2/repository/models/vgg_a/unload", data=b"{}",
                                     method="POST")
    urllib.request.urlopen(request, timeout=30).close()  # the canary's only member: every canary request fails
    data = digits[1].read_bytes()
    answers = [classify(gateway, data, "guarded", **{"X-Rollout-Key": f"k{i}"}) for i in range(60)]
    assert [a.status_code for a in answers] == [200] * 60
    assert {a.json()["pipeline"] for a in answers} == {"guarded"}  # the stable pipeline answered every one
    errors = metric_value(gateway.url, "vgg_gateway_canary_requests_total", pipeline="guarded",
                          candidate="guarded_v2", outcome="error")
    assert errors == 5  # min_requests failures, then no more canary traffic
    canary = {p["name"]: p for p in httpx.get(gateway.url + "/v1/pipelines", timeout=10).json()["pipelines"]}[
        "guarded"]["rollout"]["canary"]
    assert (canary["state"], canary["weight"]) == ("rolled_back", 0.0)
    assert canary["reason"].startswith("error rate 100.0%")
    assert metric_value(gateway.url, "vgg_gateway_canary_rollbacks_total", pipeline="guarded",
                        candidate="guarded_v2", reason="automatic") == 1


def test_the_admin_route_and_the_cli_promote_and_roll_back(rolled, digits, capsys):
    _, gateway, _ = rolled
    url = f"{gateway.url}/v1/pipelines/split/rollout"
    assert httpx.post(url, json={"action": "promote"}, timeout=10).status_code == 401
    wrong = httpx.post(url, json={"action": "promote"}, headers={"Authorization": "Bearer nope"}, timeout=10)
    assert wrong.status_code == 401
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    assert httpx.post(url, json={"action": "explode"}, headers=admin, timeout=10).status_code == 422
    assert httpx.post(f"{gateway.url}/v1/pipelines/candidate/rollout", json={"action": "promote"}, headers=admin,
                      timeout=10).json()["error"]["code"] == "no_canary"
    assert client_main(["--url", gateway.url, "rollout", "split", "--promote", "--admin-key", ADMIN_KEY]) == 0
    assert json.loads(capsys.readouterr().out)["canary"]["state"] == "promoted"
    data = digits[2].read_bytes()
    assert {classify(gateway, data, "split", **{"X-Rollout-Key": f"p{i}"}).json()["pipeline"]
            for i in range(10)} == {"split_v2"}
    with Client(gateway.url) as client:
        assert client.rollout("split", "rollback", admin_key=ADMIN_KEY)["canary"]["state"] == "rolled_back"
        assert {client.classify(data, pipeline="split").pipeline for _ in range(10)} == {"split"}
        assert client.rollout("split", "resume", admin_key=ADMIN_KEY)["canary"]["weight"] == 0.3
        assert client.shadow_report("shadowed")["candidate"] == "candidate"
    assert client_main(["--url", gateway.url, "shadow", "shadowed"]) == 0
    assert json.loads(capsys.readouterr().out)["pipeline"] == "shadowed"


def test_a_changed_rollout_applies_without_a_restart_or_a_failed_request(rolled, digits, capsys):
    """The canary's weight raised to 1 in the spec, regenerated and applied to the running Triton while requests
    flow: none fails, and the gateway routes by the new weight once it has re-read the pipeline."""
    triton, gateway, folder = rolled
    data = digits[3].read_bytes()
    answers: list[httpx.Response] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            answers.append(classify(gateway, data, "split", **{"X-Rollout-Key": f"a{len(answers)}"}))

    (folder / "spec.toml").write_text(SPEC.replace("weight = 0.3", "weight = 1.0"))
    flowing = threading.Thread(target=load)
    flowing.start()
    try:
        assert repository_main(["--spec", str(folder / "spec.toml"), "--repository", str(folder / "repository"),
                                "--apply", triton.http_url]) == 0
        assert "loaded split\n" in capsys.readouterr().out
        deadline = time.monotonic() + 30
        while not answers or answers[-1].json().get("pipeline") != "split_v2":
            assert time.monotonic() < deadline, "the gateway never routed by the new weight"
            time.sleep(0.2)
        time.sleep(1.0)
    finally:
        stop.set()
        flowing.join()
    assert answers and {a.status_code for a in answers} == {200}
    tail = [a.json()["pipeline"] for a in answers[-5:]]
    assert tail == ["split_v2"] * 5


def test_rollouts_the_repository_cannot_honour_are_refused_at_generation(triton_repository, tmp_path):
    repository = tmp_path / "repository"
    shutil.copytree(triton_repository, repository)
    labels = tmp_path / "five.txt"
    labels.write_text("\n".join(f"c{i}" for i in range(5)) + "\n")
    checkpoint = make_checkpoint(tmp_path / "five.pt", "A", seed=7, num_classes=5)
    assert export_main([str(checkpoint), "--repository", str(repository), "--name", "vgg_five", "--labels",
                        str(labels), "--threads", "1"]) == 0
    spec = tmp_path / "spec.toml"
    spec.write_text((TESTS / "pipelines.toml").read_text()
                    + '\n[pipelines.five]\nmembers = ["vgg_five"]\nscales = [64]\n'
                    + '\n[pipelines.fast.canary]\npipeline = "five"\nweight = 0.1\n')
    with pytest.raises(SpecError, match=r"^pipelines.fast.canary: 'five' answers 5 classes, 'fast' 10$"):
        generate(load_spec(spec), repository)
