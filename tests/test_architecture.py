"""The import rules of docs/architecture.md, checked on every module: code runs in layers, and nothing imports a
layer above its own (a forbidden import fails here with the file, the line and the rule)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROJECT = {"vgg", "export", "train", "server", "client", "bench", "deploy"}

# layer -> what its modules may import from the project (a name allows it and everything below it)
ALLOWED = {
    "client": {"client"},  # installable alone (pip install ./client); its contract module is the project's bottom
    "vgg": {"vgg", "client.contract"},
    "export": {"export", "vgg", "client.contract"},
    "train": {"train", "export", "vgg", "client.contract"},
    "server": {"server", "vgg", "client.contract"},
    "server.gateway": {"server.gateway", "server.triton_access", "server.telemetry", "server.maps",
                       "server.rollout_spec", "vgg.imaging", "client.contract"},
    "deploy": {"deploy"},
}


def layer_of(module: str) -> str:
    return max((layer for layer in ALLOWED if module == layer or module.startswith(layer + ".")), key=len)


def imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return [(line, name) for line, name in found if name.split(".")[0] in PROJECT]


def allowed(name: str, rules: set[str]) -> bool:
    return any(name == rule or name.startswith(rule + ".") for rule in rules)


def test_no_module_imports_above_its_layer():
    broken = []
    for top in sorted(ALLOWED):
        if "." in top:
            continue
        for path in sorted((ROOT / top).rglob("*.py")):
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            layer = layer_of(module)
            for line, name in imports(path):
                if not allowed(name, ALLOWED[layer]):
                    broken.append(f"{path.relative_to(ROOT)}:{line} imports {name} (layer {layer} may import "
                                  f"{', '.join(sorted(ALLOWED[layer]))})")
    assert not broken, "\n".join(broken)


def test_the_rules_catch_an_upward_import(tmp_path):
    source = tmp_path / "upward.py"
    source.write_text("from server.gateway.app import create_app\nimport vgg.nets\n")
    assert [name for _, name in imports(source) if not allowed(name, ALLOWED["export"])] == [
        "server.gateway.app.create_app"]


def test_every_module_imports():
    """A renamed or removed name fails here, not at the first run of a benchmark nobody runs in CI. Code that only
    Triton's Python backend can import (it provides triton_python_backend_utils) is left to the integration tests."""
    modules = []
    for top in ("vgg", "export", "train", "server", "client", "bench", "deploy"):
        for path in sorted((ROOT / top).rglob("*.py")):
            if {"pipeline_steps", "backends", "spinner"} & set(path.parts) or path.name == "__main__.py":
                continue
            modules.append(".".join(path.relative_to(ROOT).with_suffix("").parts))
    script = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\n"
    done = subprocess.run([sys.executable, "-c", script, *modules], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
