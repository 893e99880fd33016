"""Fails when a Python file of the project is in no Bazel target's srcs.

    python scripts/check_bazel_srcs.py scripts/bazel

Asks Bazel (`bazel query`, offline) for the srcs of every py_library and py_test, and
checks that each module of har_tf/, pipeline/ and configs/ is in some py_library's
srcs, and each file of tests/ in some target's (each test_*.py in a py_test's). The
BUILD files glob their package's *.py, so a new module is picked up by itself; what
this catches is a new subdirectory (a subpackage), which the globs do not reach, and
a test file with no py_test. `make bazel-test` runs it.
"""

from __future__ import annotations

import os
import subprocess
import sys

LIBRARY_DIRS = ("har_tf", "pipeline", "configs")
TEST_DIR = "tests"
QUERY = 'labels(srcs, kind("{kind}", //...))'


def label_to_path(label: str) -> str | None:
    """'//har_tf:layers/fused.py' -> 'har_tf/layers/fused.py'; None for other repos."""
    if not label.startswith("//"):
        return None
    package, _, name = label[2:].partition(":")
    return f"{package}/{name}" if package else name


def python_files(root: str, dirs) -> set[str]:
    """The *.py files under root/<dir> for each dir, as paths relative to root."""
    found = set()
    for top in dirs:
        for dirpath, dirnames, filenames in os.walk(os.path.join(root, top)):
            dirnames[:] = [d for d in dirnames if d != "__pycache__"]
            rel = os.path.relpath(dirpath, root)
            found.update(f"{rel}/{f}" for f in filenames if f.endswith(".py"))
    return found


def suggestion(root: str, path: str) -> str:
    """What to add so that `path` is covered: a glob in the BUILD of its Bazel package."""
    directory = os.path.dirname(path)
    package = directory
    while package and not os.path.exists(os.path.join(root, package, "BUILD")):
        package = os.path.dirname(package)
    if not package:
        return f"add a BUILD with a py_library to {directory}/"
    pattern = os.path.relpath(os.path.join(directory, "*.py"), package)
    return f'add "{pattern}" to the srcs glob in {package}/BUILD'


def uncovered(root: str, library_srcs: set[str], test_srcs: set[str]) -> list[str]:
    """One line per file that the BUILD files leave out, saying what to add."""
    problems = []
    for path in sorted(python_files(root, LIBRARY_DIRS) - library_srcs):
        problems.append(f"{path}: in no py_library's srcs; {suggestion(root, path)}")
    for path in sorted(python_files(root, [TEST_DIR])):
        if os.path.basename(path).startswith("test_"):
            if path not in test_srcs:
                problems.append(f"{path}: no py_test runs it; add a pytest_file to its BUILD")
        elif path not in library_srcs | test_srcs:
            problems.append(f"{path}: in no target's srcs; {suggestion(root, path)}")
    return problems


def query_srcs(bazel: list[str], kind: str, root: str) -> set[str]:
    out = subprocess.run(
        [*bazel, "query", "--output=label", QUERY.format(kind=kind)],
        cwd=root,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return {p for p in map(label_to_path, out.split()) if p}


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    library, tests = (query_srcs(argv, kind, root) for kind in ("py_library", "py_test"))
    problems = uncovered(root, library, tests)
    for line in problems:
        print(line, file=sys.stderr)
    if problems:
        print(f"{len(problems)} file(s) missing from the BUILD files", file=sys.stderr)
        return 1
    print("BUILD files cover every Python file of har_tf/, pipeline/, configs/, tests/")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
