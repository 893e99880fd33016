"""Imports every module of one layer of pipeline/ under `bazel test` (//bazel:layer_<x>).

    layer_test.py pipeline.data

The test's runfiles hold the layer's py_library and its deps only, the layers under
it (pipeline/<layer>/BUILD). A module that imports a higher layer (or a sideways one)
fails here: `pipeline.<higher>` is not in the runfiles, so the import raises
ModuleNotFoundError; and a project module found anyway, in the venv's editable
install, is reported as imported from outside the runfiles (pytest_runner's check).
tests/test_imports.py checks the same layering by reading the sources.
"""

import importlib
import os
import pkgutil
import sys

from pytest_runner import modules_from_elsewhere, scratch_under  # bazel/, this directory


def layer_modules(layer: str) -> list[str]:
    """The layer's package and every module under it, except a __main__."""
    package = importlib.import_module(layer)
    found = [m.name for m in pkgutil.walk_packages(package.__path__, layer + ".")]
    return [layer, *(name for name in found if not name.endswith(".__main__"))]


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    if os.environ.get("TEST_TMPDIR"):
        scratch_under(os.environ["TEST_TMPDIR"])
    names = layer_modules(argv[0])
    for name in names:
        importlib.import_module(name)
    stray = modules_from_elsewhere(sys.modules, os.getcwd())
    if stray:
        print("imported from outside the runfiles: " + ", ".join(stray), file=sys.stderr)
        return 1
    print(f"{argv[0]}: {len(names)} modules imported with only the layers under it")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
