"""har_tf.onednn: TF_ENABLE_ONEDNN_OPTS is set before TensorFlow loads, the user's wins.

The entry-point tests start fresh interpreters (this process imported TensorFlow long
ago) and ask the TensorFlow loaded there whether its oneDNN kernels are on.
"""

import os
import subprocess
import sys
import warnings

import pytest

from har_tf import onednn
from tests import harness

STEP_TIME = os.path.join(harness.REPO, "benchmarks", "step_time.py")

# What a fresh interpreter prints after the entry point's imports: the variable as
# TensorFlow saw it and TensorFlow's own answer.
_REPORT = (
    "import os; from tensorflow.python.util import _pywrap_util_port as p; "
    "print(os.environ.get('TF_ENABLE_ONEDNN_OPTS'), p.IsMklEnabled())"
)
_ENTRY_POINTS = {
    "pipeline.run": "import pipeline.run",
    "pipeline.serve": "import pipeline.serve",
    "har_tf": "import har_tf",
    "benchmarks/step_time.py": (
        "import importlib.util as u; "
        f"s = u.spec_from_file_location('st', {STEP_TIME!r}); "
        "s.loader.exec_module(u.module_from_spec(s))"
    ),
}


def _fresh(entry: str, setting: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != onednn.VARIABLE}
    if setting is not None:
        env[onednn.VARIABLE] = setting
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    code = f"import sys; assert 'tensorflow' not in sys.modules; {_ENTRY_POINTS[entry]}; {_REPORT}"
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=harness.REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip().splitlines()[-1]


def _x86() -> bool:
    import platform

    return platform.machine().lower() in onednn._X86_MACHINES


@pytest.mark.skipif(not _x86(), reason="oneDNN is switched on only on x86")
@pytest.mark.parametrize(
    "entry",
    [
        "pipeline.run",
        pytest.param("pipeline.serve", marks=pytest.mark.slow),
        pytest.param("har_tf", marks=pytest.mark.slow),
        pytest.param("benchmarks/step_time.py", marks=pytest.mark.slow),
    ],
)
def test_entry_point_turns_onednn_on(entry):
    assert _fresh(entry, None) == "1 True"


@pytest.mark.skipif(not _x86(), reason="oneDNN is switched on only on x86")
@pytest.mark.parametrize("setting, expected", [("0", "0 False"), ("1", "1 True")])
def test_users_setting_wins(setting, expected):
    assert _fresh("pipeline.run", setting) == expected


def _never_asked():
    raise AssertionError("TensorFlow is not loaded; nothing to ask")


def test_sets_the_variable_on_x86_before_tensorflow_loads():
    env = {}
    assert (
        onednn.enable_onednn(environ=env, modules={}, machine="x86_64", onednn_enabled=_never_asked)
        == "set"
    )
    assert env == {"TF_ENABLE_ONEDNN_OPTS": "1"}


@pytest.mark.parametrize("value", ["0", "1", ""])
def test_leaves_a_users_value_alone(value):
    env = {"TF_ENABLE_ONEDNN_OPTS": value}
    result = onednn.enable_onednn(
        environ=env, modules={"tensorflow": object()}, machine="AMD64", onednn_enabled=_never_asked
    )
    assert result == "user"
    assert env == {"TF_ENABLE_ONEDNN_OPTS": value}


def test_leaves_other_architectures_alone():
    env = {}
    assert onednn.enable_onednn(environ=env, modules={}, machine="aarch64") == "not-x86"
    assert env == {}


def test_warns_once_when_tensorflow_came_first_with_onednn_off(monkeypatch):
    monkeypatch.setattr(onednn, "_warned", False)
    env = {}
    loaded = {"tensorflow": object()}
    with pytest.warns(RuntimeWarning, match="TF_ENABLE_ONEDNN_OPTS"):
        result = onednn.enable_onednn(
            environ=env, modules=loaded, machine="x86_64", onednn_enabled=lambda: False
        )
    assert result == "too-late"
    assert env == {}  # setting it now would change nothing and mislead
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = onednn.enable_onednn(
            environ=env, modules=loaded, machine="x86_64", onednn_enabled=lambda: False
        )
    assert again == "too-late"


def test_silent_when_tensorflow_came_first_with_onednn_on(monkeypatch):
    monkeypatch.setattr(onednn, "_warned", False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = onednn.enable_onednn(
            environ={},
            modules={"tensorflow": object()},
            machine="x86_64",
            onednn_enabled=lambda: True,
        )
    assert result == "already-on"
