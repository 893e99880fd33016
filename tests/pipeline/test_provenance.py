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
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }
    return subprocess.run(
        ["git", "-C", str(root), *args], capture_output=True, text=True, check=True, env=env
    ).stdout.strip()


@pytest.fixture
def repo(tmp_path):
    root = tmp_path / "repo"
    root.mkdir()
    _git(root, "init", "-q")
    (root / "code.py").write_text("x = 1\n")
    _git(root, "add", "code.py")
    _git(root, "commit", "-q", "-m", "first")
    return root


def test_the_commit_is_git_s_head_and_a_change_of_tracked_code_marks_it_dirty(repo):
    assert provenance.code_version(str(repo)) == {
        "commit": _git(repo, "rev-parse", "HEAD"),
        "dirty": False,
    }
    (repo / "workdir.json").write_text("{}\n")  # untracked: a workdir is not code
    assert provenance.code_version(str(repo))["dirty"] is False
    (repo / "code.py").write_text("x = 2\n")
    assert provenance.code_version(str(repo))["dirty"] is True
    _git(repo, "commit", "-q", "-am", "second")
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
