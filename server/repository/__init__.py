"""Generate the Triton model repository's pipelines from the declarative spec: the one tool that writes them.

    python -m server.repository --spec pipelines.toml --repository model_repository

For each pipeline P it writes the ensemble `P`, its preprocess step `P_preprocess` and its fusion step `P_fuse`
(pipelines that preprocess or fuse alike share one step, named after the first of them), and, when P has dense
views, `P_maps`: the same steps, also answering each member's class score maps (maps.py);
member models missing from the repository are exported from the checkpoints the spec names. Files are rewritten
only when their content changes, so a second run changes nothing; generated models no longer in the spec are
removed. Nobody edits the generated configs by hand.
"""

from server.repository.cli import main
from server.repository.configs import resolve
from server.repository.members import Member, read_member
from server.repository.writer import generate

__all__ = ["Member", "generate", "main", "read_member", "resolve"]
