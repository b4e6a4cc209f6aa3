"""Render every kustomization under deploy/ and validate what it renders, offline (no cluster, no API server).

    python -m deploy.validate [KUSTOMIZATION_DIR ...]     (default: every overlay and deploy/kserve)

Built-in kinds are checked with kubernetes-validate in strict mode (unknown fields are errors) against a recent
Kubernetes; custom resources (KEDA, prometheus-operator, KServe) with jsonschema against their CRDs'
openAPIV3Schema, committed in deploy/schemas/ with source and version, made strict the same way. One line per
problem, exit status 1 if there is any.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

DEPLOY = Path(__file__).resolve().parent
SCHEMAS = DEPLOY / "schemas"
KUBERNETES_VERSION = "1.37.0"
DEFAULT_TARGETS = ("overlays/cpu", "overlays/gpu", "kserve")
KLOG_PREFIX = re.compile(r"^[EWIF]\d{4} [\d:.]+\s+\d+ [\w.:-]+\] ")  # kubectl's log header


class RenderError(RuntimeError):
    """kustomize could not build the directory; the message is kustomize's first line."""


@dataclass(frozen=True)
class CustomSchema:
    api_version: str
    kind: str
    source: str
    version: str
    schema: dict[str, Any]


def render(directory: Path) -> list[dict[str, Any]]:
    """The resources ``kubectl kustomize`` builds from ``directory``."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise RenderError("kubectl is not installed (it has kustomize built in)")
    result = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        lines = [KLOG_PREFIX.sub("", line).strip() for line in result.stderr.splitlines() if line.strip()]
        raise RenderError((lines or ["(no message)"])[0].removeprefix("error: "))
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def strict(schema: Any) -> Any:
    """A CRD schema that rejects unknown fields, as the API server's strict field validation does: every object
    with declared properties gets additionalProperties false unless it preserves unknown fields."""
    if isinstance(schema, dict):
        out = {key: strict(value) for key, value in schema.items()}
        if ("properties" in out and "additionalProperties" not in out
                and not out.get("x-kubernetes-preserve-unknown-fields")):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    return schema


@cache
def custom_schemas() -> dict[tuple[str, str], CustomSchema]:
    """(apiVersion, kind) -> the committed CRD schema."""
    found = {}
    for path in sorted(SCHEMAS.glob("*.json")):
        data = json.loads(path.read_text())
        schema = copy.deepcopy(data["openAPIV3Schema"])
        schema.setdefault("properties", {})["metadata"] = {"type": "object"}  # checked by the API server itself
        found[(data["apiVersion"], data["kind"])] = CustomSchema(data["apiVersion"], data["kind"], data["source"],
                                                                 data["version"], strict(schema))
    return found


def resource_name(resource: dict[str, Any]) -> str:
    return f"{resource.get('kind', '?')}/{resource.get('metadata', {}).get('name', '?')}"


def check_resource(resource: dict[str, Any]) -> list[str]:
    """Problems with one rendered resource; empty when it validates."""
    key = (resource.get("apiVersion", ""), resource.get("kind", ""))
    custom = custom_schemas().get(key)
    if custom is not None:
        validator = jsonschema.Draft7Validator(custom.schema)
        return [f"{resource_name(resource)}: {'.'.join(map(str, error.absolute_path)) or '(top)'}: {error.message}"
                for error in sorted(validator.iter_errors(resource), key=lambda e: list(map(str, e.path)))]
    try:
        kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = ".".join(map(str, exc.path)) or "(top)"
        return [f"{resource_name(resource)}: {where}: {exc.message}"]
    except kubernetes_validate.SchemaNotFoundError:
        return [f"{resource_name(resource)}: neither Kubernetes {KUBERNETES_VERSION} nor deploy/schemas has a schema "
                f"for {key[0]} {key[1]}"]
    return []


def check_directory(directory: Path) -> tuple[int, list[str]]:
    """(resources rendered, problems) for one kustomization."""
    resources = render(directory)
    problems = [problem for resource in resources for problem in check_resource(resource)]
    return len(resources), problems


def shown(directory: Path) -> str:
    """Relative to the working directory where it lies below it: the path a user would type."""
    try:
        return str(directory.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(directory)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.validate", description=__doc__.splitlines()[0])
    parser.add_argument("directories", nargs="*", type=Path, metavar="KUSTOMIZATION_DIR",
                        help="default: " + ", ".join(f"deploy/{t}" for t in DEFAULT_TARGETS))
    args = parser.parse_args(argv)
    directories = args.directories or [DEPLOY / target for target in DEFAULT_TARGETS]
    failed = False
    for path in directories:
        directory = shown(path)
        if not (path / "kustomization.yaml").is_file():
            print(f"{directory}: error: no kustomization.yaml there", file=sys.stderr)
            failed = True
            continue
        try:
            count, problems = check_directory(path)
        except RenderError as exc:
            print(f"{directory}: error: does not render: {exc}", file=sys.stderr)
            failed = True
            continue
        for problem in problems:
            print(f"{directory}: error: {problem}", file=sys.stderr)
        failed = failed or bool(problems)
        if not problems:
            print(f"{directory}: {count} resources valid (Kubernetes {KUBERNETES_VERSION}, strict; custom resources "
                  f"against deploy/schemas)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
