"""What the pods run, run in the image.

test_deploy checks the manifests against the code on this machine; nothing there runs a container the way the
cluster will. Here every container that deploy/ renders (the CPU overlay's Triton and gateway Deployments, the KServe
ServingRuntime) runs in the built CPU image under Docker with its command, args, env, user, read-only root filesystem
and shared-memory/tmp volumes translated from the rendered manifest as written, and its probes must answer 200 on its
declared ports. A probe path the server lacks, a command the image lacks, a folder the user can't write, or a
/dev/shm too small for the repository fails here instead of in a CrashLoopBackOff.
"""

from __future__ import annotations

import contextlib
import math
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import httpx
import pytest
from support.containers import digit_png, docker, inspect, logs, remove, running

from deploy import validate

pytest_plugins = ("support.containers",)

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
TRITON_SERVICE = "vgg-serve-triton"  # the headless Service the gateway's VGG_GATEWAY_TRITON_URLS names
# Stand-ins for the Secret the cluster provides (deploy/ never holds its values).
SECRETS = {"vgg-serve-secrets": {"triton-key": "pods-test-triton-key-0123456789",
                                 "metrics-api-key": "pods-test-metrics-key",
                                 "api-keys": "pods-test-api-key-1\npods-test-api-key-2\n"}}
READY_TIMEOUT_S = 240  # Triton starts a dozen Python stubs; on 2 busy cores that alone can take a minute
QUANTITY = re.compile(r"^(\d+(?:\.\d+)?)(m|k|Ki|M|Mi|G|Gi|T|Ti)?$")
FACTORS = {None: 1, "m": 1e-3, "k": 1e3, "Ki": 2**10, "M": 1e6, "Mi": 2**20, "G": 1e9, "Gi": 2**30, "T": 1e12,
           "Ti": 2**40}


@dataclass(frozen=True)
class Pod:
    """One container of a rendered pod template: the container, and the pod spec it sits in."""

    source: str
    container: dict
    spec: dict


@cache
def pods() -> dict[str, Pod]:
    """Container name -> the container and its pod, from what deploy/ renders."""
    found = {}
    for resource in validate.render(DEPLOY / "overlays" / "cpu"):
        if resource["kind"] == "Deployment":
            spec = resource["spec"]["template"]["spec"]
            found.update({c["name"]: Pod(f"Deployment/{resource['metadata']['name']}", c, spec)
                          for c in spec["containers"]})
    for resource in validate.render(DEPLOY / "kserve"):
        if resource["kind"] == "ServingRuntime":
            found.update({c["name"]: Pod(f"ServingRuntime/{resource['metadata']['name']}", c, resource["spec"])
                          for c in resource["spec"]["containers"]})
    return found


def quantity(text: str | int) -> float:
    """A Kubernetes resource quantity ("1Gi", "500m", "4") as a number."""
    match = QUANTITY.match(str(text))
    assert match, f"not a quantity this test reads: {text!r}"
    return float(match[1]) * FACTORS[match[2]]


def resource_field(pod: Pod, ref: dict) -> str:
    """What the downward API gives for a resourceFieldRef: the value over the divisor, rounded up."""
    target = next(c for c in pod.spec["containers"] if c["name"] == ref.get("containerName", pod.container["name"]))
    kind, _, resource = ref["resource"].partition(".")
    value = target.get("resources", {}).get(kind, {}).get(resource)
    assert value is not None, f"{pod.source}: {ref['resource']} is not set, the node's allocatable would be used"
    return str(math.ceil(quantity(value) / quantity(ref.get("divisor", "1"))))


def env_value(pod: Pod, variable: dict, secrets: Mapping[str, Mapping[str, str]]) -> str:
    if "value" in variable:
        return str(variable["value"])
    source = variable["valueFrom"]
    if "secretKeyRef" in source:
        ref = source["secretKeyRef"]
        assert ref["key"] in secrets.get(ref["name"], {}), f"{pod.source}: no stand-in for secret {ref}"
        return secrets[ref["name"]][ref["key"]]
    if "resourceFieldRef" in source:
        return resource_field(pod, source["resourceFieldRef"])
    raise AssertionError(f"{pod.source}: env {variable['name']} comes from {source}, which this test can't translate")


def docker_run_args(pod: Pod, secrets: Mapping[str, Mapping[str, str]], scratch: Path) -> tuple[list[str], list[str]]:
    """(``docker run`` options, command words) that run ``pod.container`` as its manifest writes it. Secret volumes
    are written under ``scratch``."""
    container, spec = pod.container, pod.spec
    unsupported = {"envFrom", "workingDir", "volumeDevices"} & container.keys()
    assert not unsupported, f"{pod.source}: {unsupported} not translated to docker run"
    options: list[str] = []
    words = [*container.get("command", []), *container.get("args", [])]
    if container.get("command"):
        options += ["--entrypoint", words.pop(0)]
    for variable in container.get("env", []):
        options += ["--env", f"{variable['name']}={env_value(pod, variable, secrets)}"]

    pod_security, security = spec.get("securityContext", {}), container.get("securityContext", {})
    uid = security.get("runAsUser", pod_security.get("runAsUser"))
    gid = security.get("runAsGroup", pod_security.get("runAsGroup"))
    if uid is not None:
        options += ["--user", str(uid) if gid is None else f"{uid}:{gid}"]
    if "fsGroup" in pod_security:
        options += ["--group-add", str(pod_security["fsGroup"])]
    if security.get("readOnlyRootFilesystem"):
        options.append("--read-only")
    if "ALL" in security.get("capabilities", {}).get("drop", []):
        options += ["--cap-drop", "ALL"]
    if security.get("allowPrivilegeEscalation") is False:
        options += ["--security-opt", "no-new-privileges"]
    memory = container.get("resources", {}).get("limits", {}).get("memory")
    if memory is not None:
        options += ["--memory", str(int(quantity(memory)))]

    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        volume, path = volumes[mount["name"]], mount["mountPath"]
        assert "subPath" not in mount, f"{pod.source}: subPath mounts not translated"
        if "emptyDir" in volume:
            empty = volume["emptyDir"] or {}
            size = int(quantity(empty["sizeLimit"])) if "sizeLimit" in empty else None
            if path == "/dev/shm" and size is not None:
                options += ["--shm-size", str(size)]
            elif empty.get("medium") == "Memory" and size is not None:
                options += ["--tmpfs", f"{path}:size={size},mode=1777"]
            else:  # the pod's fsGroup makes an emptyDir writable; mode 1777 stands in for it
                options += ["--tmpfs", f"{path}:mode=1777"]
        elif "secret" in volume:
            secret = volume["secret"]
            values = secrets[secret["secretName"]]
            items = secret.get("items") or [{"key": key, "path": key} for key in values]
            folder = scratch / f"secret-{mount['name']}"
            for item in items:
                target = folder / item["path"]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(values[item["key"]])
                target.chmod(0o644)  # readable by the container's uid, as the kubelet's defaultMode 0644 makes it
            folder.chmod(0o755)
            options += ["--volume", f"{folder}:{path}:ro"]
        else:
            raise AssertionError(f"{pod.source}: volume {volume} not translated to docker run")
    return options, words


def probe_ports(container: dict) -> dict[str, int]:
    """Each probe's httpGet path -> its container port, names resolved through the container's ``ports``."""
    named = {p["name"]: p["containerPort"] for p in container.get("ports", []) if "name" in p}
    declared = {p["containerPort"] for p in container.get("ports", [])}
    paths = {}
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        if "httpGet" in container.get(kind, {}):
            get = container[kind]["httpGet"]
            port = named[get["port"]] if isinstance(get["port"], str) else int(get["port"])
            assert port in declared, f"{container['name']}'s {kind} uses port {port}, which it doesn't declare"
            paths[get["path"]] = port
    assert paths, f"{container['name']} has no httpGet probe"
    return paths


@dataclass(frozen=True)
class Started:
    name: str
    pod: Pod
    host_ports: dict[int, int]  # container port -> host port on 127.0.0.1

    def url(self, port: int, path: str) -> str:
        return f"http://127.0.0.1:{self.host_ports[port]}{path}"


@contextlib.contextmanager
def started(pod: Pod, *extra: str) -> Iterator[Started]:
    """``pod.container`` running in the image as written, its probe ports published on 127.0.0.1; removed after."""
    with tempfile.TemporaryDirectory(prefix="vgg-pods-") as scratch:
        options, words = docker_run_args(pod, SECRETS, Path(scratch))
        ports = sorted(set(probe_ports(pod.container).values()))
        publish = [word for port in ports for word in ("--publish", f"127.0.0.1::{port}")]
        with running(*options, *publish, *extra, command=words, prefix=f"vgg-pods-{pod.container['name']}") as name:
            host_ports = {port: int(docker("port", name, f"{port}/tcp").stdout.splitlines()[0].rsplit(":", 1)[1])
                          for port in ports}
            yield Started(name, pod, host_ports)


def wait_probes(server: Started, timeout: float = READY_TIMEOUT_S) -> None:
    """Until every probe path answers 200; fails early if the container exits."""
    pending = dict(probe_ports(server.pod.container))
    deadline, last = time.monotonic() + timeout, {}
    while pending and time.monotonic() < deadline:
        for path, port in list(pending.items()):
            try:
                response = httpx.get(server.url(port, path), timeout=5)
                last[path] = response.status_code
                if response.status_code == 200:
                    del pending[path]
            except httpx.HTTPError as exc:
                last[path] = repr(exc)
        state = inspect(server.name)["State"]
        assert state["Running"], (f"{server.pod.source} exited with {state['ExitCode']} "
                                  f"(OOMKilled {state['OOMKilled']}): {logs(server.name)[-3000:]}")
        if pending:
            time.sleep(1)
    assert not pending, (f"{server.pod.source}: probes {pending} not 200 within {timeout:.0f} s (last: {last}): "
                         f"{logs(server.name)[-3000:]}")


def assert_running_as_written(server: Started) -> None:
    state = inspect(server.name)["State"]
    assert state["Running"] and not state["OOMKilled"], state
    spec_security = server.pod.spec.get("securityContext", {})
    uid = server.pod.container.get("securityContext", {}).get("runAsUser", spec_security.get("runAsUser"))
    assert uid is not None and uid != 0, f"{server.pod.source} doesn't set a non-root runAsUser"
    assert docker("exec", server.name, "id", "-u").stdout.strip() == str(uid)


@pytest.fixture(scope="module")
def network(cpu_image: str) -> Iterator[str]:
    """A user-defined network: its DNS resolves --network-alias names, as the cluster's resolves Services."""
    name = f"vgg-pods-{uuid.uuid4().hex[:8]}"
    docker("network", "create", name)
    try:
        yield name
    finally:
        docker("network", "rm", name, check=False)


@pytest.fixture(scope="module")
def triton(network: str) -> Iterator[Started]:
    with started(pods()["triton"], "--network", network, "--network-alias", TRITON_SERVICE) as server:
        yield server


def test_every_container_deploy_renders_is_run_here():
    assert {(pod.source, name) for name, pod in pods().items()} == {
        ("Deployment/vgg-serve-triton", "triton"), ("Deployment/vgg-serve-gateway", "gateway"),
        ("ServingRuntime/vgg-serve-triton", "kserve-container")}


def test_triton_deployment_runs_in_the_image(triton: Started):
    wait_probes(triton)
    assert_running_as_written(triton)


def test_gateway_deployment_runs_in_the_image_and_classifies_through_triton(network: str, triton: Started):
    gateway_pod = pods()["gateway"]
    env = {e["name"]: e.get("value") for e in gateway_pod.container["env"]}
    assert env["VGG_GATEWAY_TRITON_URLS"].split(":")[0] == TRITON_SERVICE
    wait_probes(triton)  # the gateway is ready only once Triton is
    with started(gateway_pod, "--network", network) as gateway:
        wait_probes(gateway)
        assert_running_as_written(gateway)
        port = next(p["containerPort"] for p in gateway_pod.container["ports"] if p["name"] == "http")
        response = httpx.post(gateway.url(port, "/v1/classify"), params={"pipeline": "fast"},
                              headers={"Authorization": f"Bearer {SECRETS['vgg-serve-secrets']['metrics-api-key']}"},
                              files={"file": ("digit.png", digit_png(), "image/png")}, timeout=120)
        assert response.status_code == 200, response.text
        assert isinstance(response.json()["predictions"], list) and response.json()["predictions"]


def test_kserve_runtime_runs_in_the_image(cpu_image: str):
    """KServe's storage initializer puts the model repository at /mnt/models; the image's own stands in for it."""
    pod = pods()["kserve-container"]
    assert "/mnt/models" in pod.container["command"]
    scratch = Path(tempfile.mkdtemp(prefix="vgg-pods-models-"))
    created = docker("create", cpu_image).stdout.strip()
    try:
        docker("cp", f"{created}:/models", str(scratch / "models"), timeout=300)
        for path in [scratch, *scratch.rglob("*")]:  # chmod -R a+rX: the container's uid reads what root copied
            mode = path.stat().st_mode
            path.chmod(mode | 0o444 | (0o111 if path.is_dir() or mode & 0o100 else 0))
        with started(pod, "--volume", f"{scratch / 'models'}:/mnt/models:ro") as server:
            wait_probes(server)
            assert_running_as_written(server)
    finally:
        remove(created)
        shutil.rmtree(scratch, ignore_errors=True)
