"""Nothing outside HARModel's class reaches into its private members.

HARModel's private names are read from har_model.py's class body (ast, nothing
imported): the methods it defines with a leading underscore and every `self._name`
it uses, Keras's own included (`_compute_loss`, `_loss_tracker`). Every other module
of har_tf/, pipeline/, benchmarks/ and tests/ is parsed, and an attribute access
`<expr>._name` with one of those names, where <expr> is not `self` (another class's
own attribute of the same name), or a `getattr(x, "_name")`, is a failure. The
checkpointed step and the finite-difference study use the public interface instead:
`HARModel.objective`, `HARModel.segments`, `HARModel.step_gradients`.
"""

from __future__ import annotations

import ast
import os

from tests import harness

HAR_MODEL = os.path.join(harness.REPO, "har_tf", "har_model.py")
SCANNED = ("har_tf", "pipeline", "benchmarks", "tests")


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def har_model_private_names(path: str = HAR_MODEL) -> set[str]:
    """The private names HARModel's class body defines or reads off `self`."""
    tree = ast.parse(open(path, encoding="utf-8").read())
    (cls,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "HARModel"]
    names = set()
    for node in ast.walk(cls):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _is_private(node.name):
            names.add(node.name)
        elif (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "self"
            and _is_private(node.attr)
        ):
            names.add(node.attr)
        elif (  # object.__setattr__(self, "_name", ...), past Keras's tracking
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "__setattr__"
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
            and _is_private(node.args[1].value)
        ):
            names.add(node.args[1].value)
    return names


def private_accesses(source: str, names: set[str]) -> list[tuple[int, str]]:
    """(line, text) of each access to one of `names` on anything but `self`, by line."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and node.attr in names:
            if not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                found.append((node.lineno, ast.unparse(node)))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "setattr", "hasattr")
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and node.args[1].value in names
        ):
            found.append((node.lineno, ast.unparse(node)))
    return sorted(found)


def _scanned_files():
    for top in SCANNED:
        for dirpath, dirnames, files in os.walk(os.path.join(harness.REPO, top)):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for f in sorted(files):
                path = os.path.join(dirpath, f)
                if f.endswith(".py") and path != HAR_MODEL:
                    yield path


def test_the_private_names_are_read_from_the_class_body():
    names = har_model_private_names()
    # Its own (a method, two views set past Keras's tracking) and Keras's it uses.
    assert {"_step", "_objective", "_segments", "_compute_loss", "_loss_tracker"} <= names
    assert not any(n.startswith("__") for n in names)
    assert "regularized_loss" not in names and "segments" not in names


def test_the_check_flags_an_access_from_outside_and_not_a_class_of_its_own():
    names = {"_segments", "_compute_loss"}
    source = (
        "def f(model, self):\n"
        "    a = model._segments\n"
        "    b = self.model._compute_loss(x=1)\n"
        "    c = getattr(model, '_segments')\n"
        "    d = self._segments\n"  # another class's own attribute
        "    e = model.segments\n"
    )
    assert private_accesses(source, names) == [
        (2, "model._segments"),
        (3, "self.model._compute_loss"),
        (4, "getattr(model, '_segments')"),
    ]


def test_no_module_reaches_into_har_model_private_members():
    names = har_model_private_names()
    offences = []
    for path in _scanned_files():
        source = open(path, encoding="utf-8").read()
        for line, text in private_accesses(source, names):
            offences.append(f"{os.path.relpath(path, harness.REPO)}:{line}: {text}")
    assert not offences, "private HARModel members used from outside:\n" + "\n".join(offences)
