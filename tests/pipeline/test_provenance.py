"""pipeline.core.provenance names the commit a stage ran from, checked against git
itself in throwaway repositories, and every stage's metadata.json carries it."""

import os
import shutil
import subprocess

import pytest

from configs import fashion_mnist_hetero
from pipeline.core import provenance, stage

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def _git(root, *args):
    """git in `root` alone: no repository, hook or signing setting of the caller's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(
        GIT_AUTHOR_NAME="t",
        GIT_AUTHOR_EMAIL="t@t",
        GIT_COMMITTER_NAME="t",
        GIT_COMMITTER_EMAIL="t@t",
        GIT_CONFIG_NOSYSTEM="1",
        GIT_CONFIG_GLOBAL=os.devnull,
    )
    return subprocess.run(
        ["git", "-C", str(root), "-c", "commit.gpgsign=false", *args],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    ).stdout.strip()


def _repo(root):
    root.mkdir()
    _git(root, "init", "-q")
    (root / "pipeline").mkdir()
    (root / "pipeline" / "code.py").write_text("x = 1\n")
    (root / "docs").mkdir()
    (root / "docs" / "notes.md").write_text("notes\n")
    _git(root, "add", ".")
    _git(root, "commit", "-q", "-m", "first")
    return root


@pytest.fixture
def repo(tmp_path):
    return _repo(tmp_path / "repo")


def test_the_commit_is_git_s_head_and_a_change_of_tracked_code_marks_it_dirty(repo):
    assert provenance.code_version(str(repo)) == {
        "commit": _git(repo, "rev-parse", "HEAD"),
        "dirty": False,
    }
    (repo / "pipeline" / "workdir.json").write_text("{}\n")  # untracked: not code
    (repo / "docs" / "notes.md").write_text("more notes\n")  # tracked, not code
    assert provenance.code_version(str(repo))["dirty"] is False
    (repo / "pipeline" / "code.py").write_text("x = 2\n")
    assert provenance.code_version(str(repo))["dirty"] is True
    _git(repo, "commit", "-q", "-am", "second")
    assert provenance.code_version(str(repo)) == {
        "commit": _git(repo, "rev-parse", "HEAD"),
        "dirty": False,
    }


def test_git_variables_of_the_caller_do_not_point_it_at_another_repository(
    repo, tmp_path, monkeypatch
):
    other = _repo(tmp_path / "other")  # a stage started from a git hook of another repo
    (other / "pipeline" / "code.py").write_text("changed\n")
    monkeypatch.setenv("GIT_DIR", str(other / ".git"))
    monkeypatch.setenv("GIT_WORK_TREE", str(other))
    assert provenance.code_version(str(repo)) == {
        "commit": _git(repo, "rev-parse", "HEAD"),
        "dirty": False,
    }


def test_a_copy_inside_another_repository_or_outside_git_is_unknown(repo, tmp_path, monkeypatch):
    inside = repo / "venv" / "site-packages"  # an installed copy in a user's project
    inside.mkdir(parents=True)
    unknown = {"commit": None, "dirty": None}
    assert provenance.code_version(str(inside)) == unknown
    outside = tmp_path / "plain"
    outside.mkdir()
    assert provenance.code_version(str(outside)) == unknown
    monkeypatch.setenv("PATH", "")  # no git at all
    assert provenance.code_version(str(repo)) == unknown


def test_a_process_reads_its_checkout_once(monkeypatch):
    """A long process (a study's) keeps the commit it read first, not one checked out
    under it later."""
    heads = iter(["a" * 40, "b" * 40])
    monkeypatch.setattr(provenance, "code_version", lambda: {"commit": next(heads), "dirty": False})
    provenance._first_read.cache_clear()
    try:
        first = provenance.this_process()
        first["commit"] = "edited by a caller"
        assert provenance.this_process() == {"commit": "a" * 40, "dirty": False}
    finally:
        provenance._first_read.cache_clear()


def test_every_stage_records_the_commit_of_this_checkout(tmp_path):
    config = fashion_mnist_hetero.get_config("smoke")
    with stage.stage_output(str(tmp_path), "preprocess", config) as out:
        stage.write_json(os.path.join(out, "x.json"), {})
    meta = stage.read_json(os.path.join(str(tmp_path), "preprocess", stage.METADATA))
    root = provenance.REPO_ROOT
    try:
        top = _git(root, "rev-parse", "--show-toplevel")
    except subprocess.CalledProcessError:  # a sandbox without .git
        top = None
    if top is None or os.path.realpath(top) != os.path.realpath(root):
        assert meta["code"] == {"commit": None, "dirty": None}
    else:
        assert meta["code"]["commit"] == _git(root, "rev-parse", "HEAD")
        assert isinstance(meta["code"]["dirty"], bool)
