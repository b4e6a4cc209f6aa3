"""Model folders are built beside a Triton repository and moved in by one rename once complete, so Triton never
reads half a model. The rename needs both on one filesystem, which a repository mounted as a volume is not."""

from __future__ import annotations

import tempfile
from pathlib import Path


def staging_dir(repository: Path, prefix: str) -> Path:
    """A new folder on the repository's filesystem: beside the repository, or inside it (hidden) when the
    repository is a mount point of its own; then don't start a Triton on it while the export runs."""
    repository.mkdir(parents=True, exist_ok=True)
    parent = repository.resolve().parent
    place = parent if parent.stat().st_dev == repository.stat().st_dev else repository
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=place))
    folder.chmod(0o755)  # mkdtemp's 0700 would follow the rename and lock out a Triton of another user
    return folder
