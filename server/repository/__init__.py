"""Generate the Triton model repository's pipelines from the declarative spec: the one tool that writes them.

    python -m server.repository --spec pipelines.toml --repository model_repository

For each pipeline P it writes the ensemble `P` and, when P has dense views, `P_maps`: the same steps, also answering
each member's class score maps (maps.py). Every ensemble runs the same two step models, `preprocess` and `fuse`,
which serve all pipelines (an output per view recipe, an output per pipeline), so their stub processes do not grow
with the number of pipelines. Member models missing from the repository are exported from the checkpoints the spec
names. Files are rewritten only when their content changes, so a second run changes nothing; generated models no
longer in the spec are removed. Nobody edits the generated configs by hand.
"""

from server.repository.cli import main
from server.repository.configs import resolve
from server.repository.members import Member, read_member
from server.repository.writer import generate

__all__ = ["Member", "generate", "main", "read_member", "resolve"]
