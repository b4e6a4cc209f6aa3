"""Applying a regenerated repository to a running Triton, without a restart: every model whose files changed is
loaded again (Triton serves the old version until the new one is ready, so no request fails), new models are
loaded, removed ones unloaded. The pipelines' members go first (Triton skips those that did not change, and loads a
member's new version folder), then the steps, the pipelines that call them last.

Under `serve`, what was loaded this way is also what a restarted Triton loads, once `serve` has noted it (every
few seconds: server/triton_launcher.py, `remember_loaded`); a removed pipeline stays removed.
"""

from __future__ import annotations

from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from client.contract import CASCADE_KIND, KIND_PARAMETER
from server.triton_access import keyed_request


def changed_models(changed: list[str], repository: Path) -> tuple[list[str], list[str]]:
    """(models to load, in order, models to unload) from the paths ``generate`` reported."""
    root = Path(repository).resolve()
    load, unload = set(), set()
    for entry in changed:
        path, removed = (entry.removesuffix(" (removed)"), entry.endswith(" (removed)"))
        name = Path(path).resolve().relative_to(root).parts[0]
        (unload if removed else load).add(name)
    return sorted(load, key=lambda name: (_stage(root / name / "config.pbtxt"), name)), sorted(unload)


def _stage(config_path: Path) -> int:
    """0: models that call none; 1: ensembles; 2: cascades (which call ensembles' members)."""
    config = text_format.Parse(config_path.read_text(), mc.ModelConfig())
    if config.parameters[KIND_PARAMETER].string_value == CASCADE_KIND:
        return 2
    return 1 if config.platform == "ensemble" else 0


def apply(changed: list[str], repository: Path, http_url: str, key: str | None,
          members: set[str] = frozenset()) -> list[str]:
    """Load and unload what changed on the Triton at ``http_url``, ``members`` (the pipelines' members) first; what
    was done, one entry per model. OSError (Triton's own message) stops at the first refusal."""
    load, unload = changed_models(changed, repository)
    done = []
    for name in sorted(members - set(load)):
        keyed_request(http_url, f"/v2/repository/models/{name}/load", key, {})
    for name in load:
        keyed_request(http_url, f"/v2/repository/models/{name}/load", key, {})
        done.append(f"loaded {name}")
    for name in unload:
        keyed_request(http_url, f"/v2/repository/models/{name}/unload", key, {})
        done.append(f"unloaded {name}")
    return done
