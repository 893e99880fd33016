"""Which code ran: the git commit of the checkout that holds this package.

Every stage's metadata.json records it (`pipeline.core.stage.stage_output`), study run
records copy the train stage's (`pipeline.study.records`) and a study's report records
the aggregating code's, so a published figure names the code that trained it, not only
the code that summed it up. A fingerprint does not read it: a commit that changes no
stage's behaviour (docs, tests) keeps every stage current.

Outside a git checkout of its own (an installed wheel, a Bazel sandbox without .git)
both fields are None: unknown, not an error.
"""

from __future__ import annotations

import os
import subprocess

# The repository root of a source checkout: pipeline/core/ -> pipeline/ -> root.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _git(root: str, *args: str) -> str | None:
    try:
        return subprocess.run(
            ["git", "-C", root, *args],
            capture_output=True,
            text=True,
            check=True,
            # `git status` would otherwise refresh the index, taking index.lock, under
            # a user's own git command in the same checkout.
            env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"},
            timeout=30,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def code_version(root: str = REPO_ROOT) -> dict:
    """{"commit": HEAD's sha of the checkout at `root` (None outside git), "dirty":
    whether tracked files differ from it (None if unknown)}. Untracked files do not
    count: a workdir or a venv inside the checkout is not a change of the code."""
    out = _git(root, "rev-parse", "--show-toplevel", "HEAD")
    lines = out.splitlines() if out else []
    # `root` must be the checkout's top: an installed copy inside some other git
    # repository (a venv in a project) is not that repository's code.
    if len(lines) != 2 or os.path.realpath(lines[0]) != os.path.realpath(root):
        return {"commit": None, "dirty": None}
    commit = lines[1]
    status = _git(root, "status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if status is None else bool(status)}
