"""Runs pytest on the test files given, inside a Bazel test (see //bazel:defs.bzl).

The project's tests are pytest tests (fixtures, marks, tests/conftest.py), so each
py_test runs this file with `-m <marker expression> <test file>`. It points pytest at
the project's pyproject.toml, keeps pytest's and Keras's scratch files under the test's
TEST_TMPDIR (the runfiles tree is read-only), writes the JUnit XML where Bazel asks,
and counts "no test selected" as a failure, so a target whose marks went stale fails.

Last, it fails if a module of the project was imported from outside the runfiles: an
editable install (`pip install -e .`) in the venv would otherwise supply a module the
BUILD files forgot, and the build would pass only on machines that have one.
"""

import os
import sys

import pytest

PACKAGES = ("har_tf", "pipeline", "configs", "tests")


def modules_from_elsewhere(modules, root: str) -> list[str]:
    """Names of the project's modules whose file does not lie under `root`."""
    root = os.path.join(os.path.abspath(root), "")
    stray = []
    for name, module in sorted(modules.items()):
        path = getattr(module, "__file__", None)
        if name.split(".")[0] in PACKAGES and path and not os.path.abspath(path).startswith(root):
            stray.append(f"{name} ({path})")
    return stray


def scratch_under(tmp: str) -> None:
    """Keras and Matplotlib write under ~ unless told otherwise; the sandbox forbids it."""
    os.environ.setdefault("KERAS_HOME", os.path.join(tmp, "keras"))
    os.environ.setdefault("MPLCONFIGDIR", os.path.join(tmp, "matplotlib"))


def main(argv: list[str]) -> int:
    tmp = os.environ.get("TEST_TMPDIR")
    if not tmp:
        print("pytest_runner.py runs under `bazel test` (no TEST_TMPDIR)", file=sys.stderr)
        return 2
    scratch_under(tmp)
    args = ["-c", "pyproject.toml", "--rootdir=.", "-p", "no:cacheprovider", "-q"]
    args += ["--basetemp", os.path.join(tmp, "pytest")]
    if os.environ.get("XML_OUTPUT_FILE"):
        args += ["--junitxml", os.environ["XML_OUTPUT_FILE"]]
    code = pytest.main(args + argv)
    if code == pytest.ExitCode.NO_TESTS_COLLECTED:
        print(f"no test matched {argv}: update the target's marks in its BUILD", file=sys.stderr)
        return 1
    stray = modules_from_elsewhere(sys.modules, os.getcwd())
    if stray:
        print(
            "imported from outside the Bazel runfiles (add them to a py_library's srcs "
            "or the test's deps): " + ", ".join(stray),
            file=sys.stderr,
        )
        return 1
    return int(code)


if __name__ == "__main__":
    # Python puts this file's directory (bazel/) first on sys.path; the tests import
    # from the workspace root, the working directory, as under plain pytest.
    sys.path[0] = os.getcwd()
    sys.exit(main(sys.argv[1:]))
