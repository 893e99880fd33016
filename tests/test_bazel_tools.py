"""The two guards that keep the Bazel BUILD files in step with the code.

scripts/check_bazel_srcs.py (static: every file in some target's srcs) and
bazel/pytest_runner.py (at run time: no project module imported from outside the
runfiles), each on a small tree or module table built here.
"""

import importlib.util
import os
import types

import pytest

from tests import harness


def _load(relpath: str, name: str):
    spec = importlib.util.spec_from_file_location(name, os.path.join(harness.REPO, relpath))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def check():
    return _load("scripts/check_bazel_srcs.py", "check_bazel_srcs")


def _tree(root, files):
    for path in files:
        full = os.path.join(root, path)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "w") as f:
            f.write("")


def test_label_to_path(check):
    assert check.label_to_path("//har_tf:layers/fused.py") == "har_tf/layers/fused.py"
    assert check.label_to_path("//:setup.py") == "setup.py"
    assert check.label_to_path("@rules_python//python:defs.bzl") is None


def test_a_covered_tree_passes(check, tmp_path):
    files = ["har_tf/BUILD", "har_tf/__init__.py", "har_tf/layers/relu.py", "configs/BUILD"]
    files += ["configs/common.py", "pipeline/BUILD", "pipeline/train.py"]
    files += ["tests/BUILD", "tests/conftest.py", "tests/har_tf/BUILD", "tests/har_tf/test_tau.py"]
    _tree(tmp_path, files + ["har_tf/__pycache__/tau.cpython-311.py"])
    library = {p for p in files if p.endswith(".py") and "test_" not in p}
    assert check.uncovered(str(tmp_path), library, {"tests/har_tf/test_tau.py"}) == []


def test_a_new_subpackage_is_flagged_with_the_glob_to_add(check, tmp_path):
    # pipeline/sources/ split out of pipeline/sources.py, no BUILD of its own yet.
    files = ["pipeline/BUILD", "pipeline/train.py", "pipeline/sources/__init__.py"]
    files += ["pipeline/sources/idx.py", "configs/BUILD", "configs/x.py"]
    _tree(tmp_path, files)
    problems = check.uncovered(str(tmp_path), {"pipeline/train.py", "configs/x.py"}, set())
    assert problems == [
        'pipeline/sources/__init__.py: in no py_library\'s srcs; add "sources/*.py" to the '
        "srcs glob in pipeline/BUILD",
        'pipeline/sources/idx.py: in no py_library\'s srcs; add "sources/*.py" to the '
        "srcs glob in pipeline/BUILD",
    ]


def test_test_files_need_a_py_test_and_helpers_a_target(check, tmp_path):
    files = ["tests/BUILD", "tests/pipeline/BUILD", "tests/pipeline/test_new.py"]
    files += ["tests/pipeline/fixtures.py", "tests/conftest.py"]
    _tree(tmp_path, files)
    # A test file in a py_library (the support glob) but in no py_test still counts.
    library = {"tests/pipeline/test_new.py", "tests/conftest.py"}
    problems = check.uncovered(str(tmp_path), library, set())
    assert problems == [
        'tests/pipeline/fixtures.py: in no target\'s srcs; add "*.py" to the srcs glob in '
        "tests/pipeline/BUILD",
        "tests/pipeline/test_new.py: no py_test runs it; add a pytest_file to its BUILD",
    ]


def test_a_directory_outside_any_package(check, tmp_path):
    _tree(tmp_path, ["configs/x.py"])
    assert check.uncovered(str(tmp_path), set(), set()) == [
        "configs/x.py: in no py_library's srcs; add a BUILD with a py_library to configs/"
    ]


def test_runner_flags_project_modules_imported_from_elsewhere(tmp_path):
    runner = _load("bazel/pytest_runner.py", "pytest_runner")
    root = tmp_path / "runfiles" / "har_tf"
    inside = types.ModuleType("har_tf.tau")
    inside.__file__ = str(root / "har_tf" / "tau.py")
    outside = types.ModuleType("pipeline.data")
    outside.__file__ = "/elsewhere/pipeline/data.py"
    sibling = types.ModuleType("configs.common")  # a prefix of root is not inside it
    sibling.__file__ = str(tmp_path / "runfiles" / "har_tf2" / "configs" / "common.py")
    third_party = types.ModuleType("numpy")
    third_party.__file__ = "/venv/site-packages/numpy/__init__.py"
    builtin = types.ModuleType("pipeline")  # a namespace package has no __file__
    modules = {m.__name__: m for m in (inside, outside, sibling, third_party, builtin)}
    assert runner.modules_from_elsewhere(modules, str(root)) == [
        f"configs.common ({sibling.__file__})",
        "pipeline.data (/elsewhere/pipeline/data.py)",
    ]
