"""deploy/: every kustomization renders and validates offline; the manifests agree with what the launcher and the
gateway really serve (their own commands, ports, probes and metrics, run here); the CPU image's Dockerfile."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from support.gateway import Gateway, free_port

from deploy import validate
from deploy.dashboard import dashboard_metric_names
from server.triton_access import restriction_flags
from vgg.runtimes import RuntimeConfigError, SessionSettings

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
TRITON_KEY = "deploy-test-key-0123456789"


def rendered(target: str) -> dict[tuple[str, str], dict]:
    return {(r["kind"], r["metadata"]["name"]): r for r in validate.render(DEPLOY / target)}


def container(resource: dict, name: str) -> dict:
    return next(c for c in resource["spec"]["template"]["spec"]["containers"] if c["name"] == name)


def write_overlay(folder: Path, patch: str | None = None, extra: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    text = f"resources:\n  - {os.path.relpath(DEPLOY / 'overlays' / 'cpu', folder)}\n{extra}"
    if patch:
        (folder / "patch.yaml").write_text(patch)
        text += "patches:\n  - path: patch.yaml\n"
    (folder / "kustomization.yaml").write_text(text)
    return folder


# --- offline validation ----------------------------------------------------------------------------------------

def test_every_kustomization_renders_and_validates():
    result = subprocess.run([sys.executable, "-m", "deploy.validate"], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == ["deploy/overlays/cpu", "deploy/overlays/gpu", "deploy/kserve"]
    assert all("resources valid" in line for line in lines), lines


def test_an_unknown_field_of_a_built_in_kind_is_an_error(tmp_path, capsys):
    overlay = write_overlay(tmp_path / "typo", """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: vgg-serve-gateway
spec:
  template:
    spec:
      containers:
        - name: gateway
          readinessProb:
            httpGet: {path: /readyz, port: http}
""")
    assert validate.main([str(overlay)]) == 1
    errors = capsys.readouterr().err.splitlines()
    assert len(errors) == 1 and "Deployment/vgg-serve-gateway" in errors[0] and "readinessProb" in errors[0], errors


def test_an_unknown_field_of_a_custom_resource_is_an_error(tmp_path, capsys):
    overlay = write_overlay(tmp_path / "typo", """\
apiVersion: keda.sh/v1alpha1
kind: ScaledObject
metadata:
  name: vgg-serve-triton
spec:
  minReplicas: 2
""")
    assert validate.main([str(overlay)]) == 1
    errors = capsys.readouterr().err.splitlines()
    assert len(errors) == 1 and "ScaledObject/vgg-serve-triton" in errors[0] and "minReplicas" in errors[0], errors


def test_a_wrong_type_in_a_custom_resource_is_an_error(tmp_path, capsys):
    overlay = write_overlay(tmp_path / "type", """\
apiVersion: monitoring.coreos.com/v1
kind: PodMonitor
metadata:
  name: vgg-serve-triton
spec:
  podMetricsEndpoints:
    - port: metrics
      interval: [10s]
""")
    assert validate.main([str(overlay)]) == 1
    errors = capsys.readouterr().err.splitlines()
    assert len(errors) == 1 and "PodMonitor/vgg-serve-triton" in errors[0] and "interval" in errors[0], errors


def test_an_overlay_that_does_not_render_is_one_line_and_status_1(tmp_path):
    overlay = write_overlay(tmp_path / "broken", extra="  - missing-file.yaml\n")
    result = subprocess.run([sys.executable, "-m", "deploy.validate", str(overlay)], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 1
    errors = result.stderr.splitlines()
    assert len(errors) == 1 and "does not render" in errors[0] and "missing-file.yaml" in errors[0], errors
    assert "Traceback" not in result.stderr


def test_a_folder_without_kustomization_is_refused(tmp_path):
    result = subprocess.run([sys.executable, "-m", "deploy.validate", str(tmp_path)], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 1 and result.stderr.strip() == f"{tmp_path}: error: no kustomization.yaml there"


def test_every_custom_schema_records_its_source_and_version():
    schemas = validate.custom_schemas()
    assert {kind for _, kind in schemas} == {"ScaledObject", "PodMonitor", "ServiceMonitor", "ServingRuntime",
                                             "InferenceService"}
    for schema in schemas.values():
        assert re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+/blob/v[\d.]+/\S+\.yaml", schema.source), schema
        assert f"/blob/{schema.version}/" in schema.source


# --- what the manifests say, checked against the code --------------------------------------------------------

@pytest.mark.parametrize("overlay", ["overlays/cpu", "overlays/gpu"])
def test_triton_is_reached_only_through_its_headless_service_by_the_gateway(overlay):
    resources = rendered(overlay)
    service = resources[("Service", "vgg-serve-triton")]
    assert service["spec"]["clusterIP"] == "None"
    assert {p["port"] for p in service["spec"]["ports"]} == {8000, 8001}
    gateway_env = {e["name"]: e for e in container(resources[("Deployment", "vgg-serve-gateway")], "gateway")["env"]}
    assert gateway_env["VGG_GATEWAY_TRITON_URLS"]["value"] == "vgg-serve-triton:8000"
    policy = resources[("NetworkPolicy", "vgg-serve-triton")]["spec"]
    api_rule = next(rule for rule in policy["ingress"] if {p["port"] for p in rule["ports"]} == {8000, 8001})
    assert api_rule["from"] == [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "vgg-serve",
                                                                "app.kubernetes.io/component": "gateway"}}}]
    assert all(rule["ports"] == [{"port": 8002, "protocol": "TCP"}] for rule in policy["ingress"]
               if rule is not api_rule)
    assert ("Service", "vgg-serve-gateway") in resources
    for name in ("vgg-serve-triton", "vgg-serve-gateway"):
        assert resources[("PodDisruptionBudget", name)]["spec"]["maxUnavailable"] == 1


@pytest.mark.parametrize("overlay", ["overlays/cpu", "overlays/gpu"])
def test_triton_pod_has_shared_memory_threads_from_its_cpu_limit_and_runs_locked_down(overlay):
    deployment = rendered(overlay)[("Deployment", "vgg-serve-triton")]
    pod = deployment["spec"]["template"]["spec"]
    triton = container(deployment, "triton")
    shm = next(v for v in pod["volumes"] if v["name"] == "shm")
    assert shm["emptyDir"]["medium"] == "Memory" and shm["emptyDir"]["sizeLimit"] in ("1Gi", "2Gi")
    assert {"name": "shm", "mountPath": "/dev/shm"} in triton["volumeMounts"]
    env = {e["name"]: e for e in triton["env"]}
    assert env["VGG_ORT_THREADS"]["valueFrom"]["resourceFieldRef"] == {"containerName": "triton",
                                                                       "resource": "limits.cpu", "divisor": "1"}
    assert triton["resources"]["limits"]["cpu"] == triton["resources"]["requests"]["cpu"]  # whole cores, no throttle
    assert env["VGG_TRITON_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "vgg-serve-secrets", "key": "triton-key"}
    assert pod["securityContext"]["runAsNonRoot"] and triton["securityContext"]["readOnlyRootFilesystem"]
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    assert triton["startupProbe"]["httpGet"]["path"] == triton["readinessProbe"]["httpGet"]["path"] == \
        "/v2/health/ready"
    assert triton["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    if overlay.endswith("gpu"):
        assert triton["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert triton["image"].startswith("registry.example.com/vgg-serve-gpu:")


def test_the_gpu_command_locks_triton_like_the_launcher_does():
    triton = container(rendered("overlays/gpu")[("Deployment", "vgg-serve-triton")], "triton")
    assert triton["command"] == ["tritonserver"]
    flags = [arg for arg in triton["args"] if arg.startswith(("--http-restricted-api", "--grpc-restricted"))]
    assert flags == restriction_flags("$(VGG_TRITON_KEY)")
    assert "--model-control-mode=poll" not in triton["args"]


def test_the_autoscaler_sums_pending_requests_over_every_model_of_the_overlays_namespace():
    for overlay in ("overlays/cpu", "overlays/gpu"):
        resources = rendered(overlay)
        scaled = resources[("ScaledObject", "vgg-serve-triton")]
        assert scaled["spec"]["scaleTargetRef"]["name"] == "vgg-serve-triton"
        trigger = scaled["spec"]["triggers"][0]
        query = trigger["metadata"]["query"]
        namespace = resources[("Deployment", "vgg-serve-triton")]["metadata"]["namespace"]
        assert query.startswith("sum(nv_inference_pending_request_count{") and "avg" not in query, query
        assert f'namespace="{namespace}"' in query and "model" not in query
        assert trigger["metricType"] == "AverageValue" and float(trigger["metadata"]["threshold"]) > 0


def test_runtime_threads_from_the_environment_override_the_model_config():
    config = {"parameters": {"intra_op_thread_count": {"string_value": "1"}}}
    assert SessionSettings.from_model_config(config, {}).intra_op_threads == 1
    assert SessionSettings.from_model_config(config, {"VGG_ORT_THREADS": "4"}).intra_op_threads == 4
    for bad in ("0", "-2", "four", "1.5"):
        with pytest.raises(RuntimeConfigError, match="VGG_ORT_THREADS must be a positive whole number"):
            SessionSettings.from_model_config(config, {"VGG_ORT_THREADS": bad})


# --- the manifests' commands, ports, probes and metrics against the real processes -------------------------

def command_for_test(command: list[str], repository: Path, ports: dict[int, int]) -> list[str]:
    """The manifest's command with this test's repository and free ports, nothing else changed."""
    out = []
    for word in command:
        if word == "/models":
            word = str(repository)
        elif word.isdigit() and int(word) in ports:
            word = str(ports[int(word)])
        out.append(word)
    return [sys.executable if out[0] == "python" else out[0], *out[1:]]


@pytest.fixture(scope="module")
def served(tmp_path_factory, triton_repository):
    """Triton and the gateway started with the CPU overlay's own commands and environment (a Secret's values
    filled in), the fast pipeline only so that Triton loads quickly."""
    resources = rendered("overlays/cpu")
    triton = container(resources[("Deployment", "vgg-serve-triton")], "triton")
    gateway = container(resources[("Deployment", "vgg-serve-gateway")], "gateway")
    repository = tmp_path_factory.mktemp("deploy-repository")
    for model in ("fast", "preprocess", "fuse", "vgg_d"):
        shutil.copytree(triton_repository / model, repository / model)
    ports = {8000: free_port(), 8001: free_port(), 8002: free_port()}
    secret = {"triton-key": TRITON_KEY, "metrics-api-key": "metrics-key-1", "api-keys": "client-key-1\n"}
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("VGG_")},
           "VGG_ORT_THREADS": "1"}
    for item in triton["env"]:
        if "value" in item:
            env[item["name"]] = item["value"]
        elif "secretKeyRef" in item["valueFrom"]:
            env[item["name"]] = secret[item["valueFrom"]["secretKeyRef"]["key"]]
    log = (tmp_path_factory.mktemp("deploy-triton") / "triton.log").open("w")
    process = subprocess.Popen(command_for_test(triton["command"], repository, ports), cwd=ROOT, env=env,
                               stdout=log, stderr=subprocess.STDOUT)
    keys = tmp_path_factory.mktemp("secret") / "api-keys"
    keys.write_text(secret["api-keys"])
    gateway_env = {}
    for item in gateway["env"]:
        if "value" in item:
            gateway_env[item["name"]] = item["value"]
        else:
            gateway_env[item["name"]] = secret[item["valueFrom"]["secretKeyRef"]["key"]]
    gateway_env.update(VGG_GATEWAY_API_KEYS_FILE=str(keys), VGG_GATEWAY_HOST="127.0.0.1")
    front = None
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if httpx.get(f"http://127.0.0.1:{ports[8000]}/v2/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        assert process.poll() is None, Path(log.name).read_text()[-3000:]
        front = Gateway([f"127.0.0.1:{ports[8000]}"], env={**env, **gateway_env},
                        log_path=tmp_path_factory.mktemp("deploy-gateway") / "gateway.log")
        front.args = [sys.executable if w == "python" else w for w in gateway["command"]] + \
            ["--host", "127.0.0.1", "--port", str(front.port), "--triton-url", f"127.0.0.1:{ports[8000]}"]
        front.start(wait_ready=True)
        yield {"triton": triton, "gateway": gateway, "ports": ports, "front": front, "secret": secret}
    finally:
        if front:
            front.stop()
        process.terminate()
        process.wait(60)
        log.close()


def test_triton_probes_answer_on_the_manifests_paths_and_ports(served):
    triton, ports = served["triton"], served["ports"]
    declared = {p["name"]: p["containerPort"] for p in triton["ports"]}
    assert declared == {"http": 8000, "grpc": 8001, "metrics": 8002}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = triton[probe]["httpGet"]
        port = ports[declared[get["port"]]]
        assert httpx.get(f"http://127.0.0.1:{port}{get['path']}", timeout=5).status_code == 200, probe
    # every API but health is keyed, with the key the manifest takes from the Secret
    models = f"http://127.0.0.1:{ports[8000]}/v2/models/fast"
    assert httpx.get(models, timeout=5).status_code in (401, 403)
    assert httpx.get(models, headers={"vgg-triton-key": TRITON_KEY}, timeout=5).status_code == 200


def test_gateway_probes_keys_and_metrics_as_the_manifests_say(served, sample_images):
    gateway, front = served["gateway"], served["front"]
    assert [p["containerPort"] for p in gateway["ports"]] == [8080]
    for probe in ("readinessProbe", "livenessProbe"):
        assert httpx.get(front.url + gateway[probe]["httpGet"]["path"], timeout=5).status_code == 200, probe
    image = sample_images["china_500x333.jpg"]
    assert httpx.post(front.url + "/v1/classify?pipeline=fast", content=image,
                      headers={"content-type": "image/jpeg"}, timeout=60).status_code == 401
    ok = httpx.post(front.url + "/v1/classify?pipeline=fast", content=image, timeout=60,
                    headers={"content-type": "image/jpeg", "authorization": "Bearer client-key-1"})
    assert ok.status_code == 200, ok.text
    metrics = httpx.get(front.url + "/metrics", headers={"authorization": "Bearer metrics-key-1"}, timeout=10)
    assert metrics.status_code == 200 and "vgg_gateway_requests_total" in metrics.text


def scraped_names(text: str) -> set[str]:
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}


def test_every_metric_the_dashboard_and_the_autoscaler_query_exists_in_a_live_scrape(served, sample_images):
    front, ports = served["front"], served["ports"]
    headers = {"authorization": "Bearer client-key-1"}
    for content in (sample_images["china_500x333.jpg"], b"\xff\xd8 not a jpeg"):  # a success and a Triton error
        httpx.post(front.url + "/v1/classify?pipeline=fast", content=content, timeout=60,
                   headers={**headers, "content-type": "image/jpeg"})
    names = scraped_names(httpx.get(f"http://127.0.0.1:{ports[8002]}/metrics", timeout=10).text)
    names |= scraped_names(httpx.get(front.url + "/metrics", headers=headers, timeout=10).text)
    wanted = dashboard_metric_names()
    assert len(wanted) >= 8
    assert wanted - names == set()
    scaled = rendered("overlays/cpu")[("ScaledObject", "vgg-serve-triton")]
    assert re.findall(r"nv_[a-z_]+", scaled["spec"]["triggers"][0]["metadata"]["query"])[0] in names


def test_a_missing_secret_value_is_one_line_and_status_2(tmp_path):
    """What the containers do when a mounted Secret file is absent (a Secret marked optional, or a wrong path)."""
    missing = tmp_path / "absent"
    for command, env in ((["-m", "server.gateway", "--check-config"], {"VGG_GATEWAY_API_KEYS_FILE": str(missing)}),
                         (["-m", "server.triton_launcher", "--repository", str(tmp_path)],
                          {"VGG_TRITON_KEY_FILE": str(missing)})):
        result = subprocess.run([sys.executable, *command], cwd=ROOT, capture_output=True, text=True, timeout=60,
                                env={**{k: v for k, v in os.environ.items() if not k.startswith("VGG_")},
                                     **env})
        assert result.returncode == 2, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and str(missing) in result.stderr, result.stderr


# --- the CPU image ------------------------------------------------------------------------------------------

DOCKERFILE_CPU = ROOT / "Dockerfile.cpu"


def dockerfile_steps() -> list[tuple[str, str]]:
    joined, out = "", []
    for line in DOCKERFILE_CPU.read_text().splitlines():
        if line.lstrip().startswith("#") and not joined:
            continue
        if line.rstrip().endswith("\\"):
            joined += line.rstrip()[:-1] + " "
            continue
        joined += line
        if joined.strip():
            keyword, _, rest = joined.strip().partition(" ")
            out.append((keyword.upper(), rest.strip()))
        joined = ""
    return out


def test_cpu_dockerfile_passes_hadolint():
    result = subprocess.run([str(Path(sys.executable).parent / "hadolint"), "--no-color", str(DOCKERFILE_CPU)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_cpu_image_defaults_to_the_official_python_base():
    """Users build on the official image; `make image` passes a stand-in only where that can't be pulled."""
    bases = [args for keyword, args in dockerfile_steps() if keyword == "ARG" and args.startswith("BASE=")]
    assert len(bases) == 1 and re.fullmatch(r"BASE=python:3\.11\.\d+-slim-bookworm", bases[0])  # the 3.11 stub
