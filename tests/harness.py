"""Shared test helpers, in keras-hub's manner: compile a HARModel the way the tests
do, a serialization round-trip and a `.keras` saving check.

The `tiny_har` fixture (tests/conftest.py) builds a compiled HARModel on
`tests.har_tf.tiny_nets.tiny_backbone`.

For tests that run the pipeline's programs: REPO (the repository root), `config`
(a config file's path with its variant), `env` (the subprocess environment) and
`run_module` (`python -m <module> ...` from REPO, output captured).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import keras
import numpy as np

from har_tf import HARModel

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def config(name: str = "fashion_mnist_hetero.py", variant: str = "smoke") -> str:
    """The --config value of configs/<name>, with `variant` ("" = none)."""
    path = os.path.join(REPO, "configs", name)
    return f"{path}:{variant}" if variant else path


def env(*, keep_data_dir: bool = True, **extra: str) -> dict[str, str]:
    """The environment of a program a test runs: TensorFlow's C++ logs quiet, `extra`
    set; without `keep_data_dir`, no $HAR_DATA_DIR (the test names its data)."""
    out = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **extra}
    if not keep_data_dir:
        out.pop("HAR_DATA_DIR", None)
    return out


def run_module(module: str, *args: str, timeout: float = 300, **env_kwargs):
    """Runs `python -m module *args` from REPO and returns the CompletedProcess
    (stdout and stderr captured as text). `env_kwargs` go to `env`."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        env=env(**env_kwargs),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def compile_har(model: HARModel, optimizer=None, **compile_kwargs) -> HARModel:
    """Compiles `model` with the loss every test uses (sparse CE on logits).

    `optimizer` defaults to plain SGD(0.1); other `compile` arguments pass through.
    """
    model.compile(
        optimizer=optimizer if optimizer is not None else keras.optimizers.SGD(0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        **compile_kwargs,
    )
    return model


def har_model(backbone, *, optimizer=None, compile_kwargs=None, **kwargs) -> HARModel:
    """HARModel(backbone, **kwargs), compiled by `compile_har`."""
    return compile_har(HARModel(backbone, **kwargs), optimizer, **(compile_kwargs or {}))


def _config_json(obj) -> str:
    return json.dumps(obj.get_config(), sort_keys=True, default=str)


def run_serialization_test(obj):
    """Serializes a Keras object and back; checks the class and the config survive.

    Returns the restored object for further checks.
    """
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(obj))
    assert type(restored) is type(obj)
    assert _config_json(restored) == _config_json(obj)
    return restored


def run_model_saving_test(model: keras.Model, path, x=None):
    """Saves `model` to the `.keras` file `path` and loads it back.

    Checks the class and the config survive, and, given inputs `x`, that the
    loaded model predicts what the original does. Returns the loaded model.
    """
    path = str(path)
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded) is type(model)
    assert _config_json(loaded) == _config_json(model)
    if x is not None:
        np.testing.assert_allclose(
            loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6
        )
    return loaded


def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (held together while chosen, so that
    they differ), for servers and workers started by a test."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()
