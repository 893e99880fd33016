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

import functools
import os
import subprocess

# The repository root of a source checkout: pipeline/core/ -> pipeline/ -> root.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# The tracked paths whose changes make a checkout's code "dirty": what a stage imports
# and the configs it reads. A docs edit or saved study records are not a code change.
CODE_PATHS = ("har_tf", "pipeline", "configs")
# Variables that would point git at another repository than `-C root` (a stage started
# from a git hook or `git rebase -x` inherits them).
_REPOSITORY_VARIABLES = (
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_COMMON_DIR",
    "GIT_OBJECT_DIRECTORY",
    "GIT_NAMESPACE",
)


def _git(root: str, *args: str) -> str | None:
    env = {k: v for k, v in os.environ.items() if k not in _REPOSITORY_VARIABLES}
    # `git status` would otherwise refresh the index, taking index.lock, under a user's
    # own git command in the same checkout.
    env["GIT_OPTIONAL_LOCKS"] = "0"
    try:
        return subprocess.run(
            ["git", "-C", root, *args],
            capture_output=True,
            text=True,
            check=True,
            env=env,
            timeout=30,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def code_version(root: str = REPO_ROOT) -> dict:
    """{"commit": HEAD's sha of the checkout at `root` (None outside git), "dirty":
    whether tracked files under CODE_PATHS differ from it (None if unknown)}.
    Untracked files do not count: a workdir or a venv inside the checkout is not code."""
    out = _git(root, "rev-parse", "--show-toplevel", "HEAD")
    lines = out.splitlines() if out else []
    # `root` must be the checkout's top: an installed copy inside some other git
    # repository (a venv in a project) is not that repository's code.
    if len(lines) != 2 or os.path.realpath(lines[0]) != os.path.realpath(root):
        return {"commit": None, "dirty": None}
    status = _git(root, "status", "--porcelain", "--untracked-files=no", "--", *CODE_PATHS)
    return {"commit": lines[1], "dirty": None if status is None else bool(status)}


def this_process() -> dict:
    """code_version() of this package's checkout, read once per process (at its first
    stage), so that a checkout changed under a long process (a study's, which trains
    run after run) does not credit its later stages to code it never imported."""
    return dict(_first_read())


@functools.cache
def _first_read() -> tuple:
    return tuple(code_version().items())
