"""The HAR objective of a real-size ResNet in float32 against an independent float64
reference, shared by tests/har_tf/test_exactness.py; also the child process that
computes the float32 side under another `TF_ENABLE_ONEDNN_OPTS` setting.

The float32 side is the library's default path: fused batch-norm kernels, the
hand-written first- and second-order BN rules, and whatever convolution kernels the
process runs (oneDNN where on). The float64 reference is the same network built with
`synchronized_bn=True`: on one device every BN then runs Keras's own composition
(E[x^2] - E[x]^2, no stop_gradient) under plain autodiff, and nothing fuses in
float64, so no hand-written rule of har_tf enters it. A smooth activation
(softplus) keeps HAR's weight gradient continuous in the weights, so rounding can
only move it by rounding (docs/EXACTNESS.md has the ReLU case).

Child process:

    TF_ENABLE_ONEDNN_OPTS=0 python -m tests.har_tf.exactness IN.npz OUT.npz
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys

# First: importing har_tf sets the oneDNN default unless the caller set it.
import har_tf  # noqa: F401

# isort: split
import keras
import numpy as np
import tensorflow as tf

from har_tf.models import cifar_resnet
from tests import harness

REPO = harness.REPO
NUM_CLASSES = 10
LAM = 10.0
# A per-class tau, so that tau enters the objective per example.
TAU = np.linspace(0.2, 1.0, NUM_CLASSES)


@contextlib.contextmanager
def floatx(dtype: str):
    """Builds layers in `dtype` inside the block; restores floatx and the dtype policy."""
    old_floatx, old_policy = keras.config.floatx(), keras.config.dtype_policy()
    keras.config.set_floatx(dtype)
    keras.config.set_dtype_policy(dtype)
    try:
        yield
    finally:
        keras.config.set_floatx(old_floatx)
        keras.config.set_dtype_policy(old_policy)


def har_model(spec: dict, dtype: str = "float32", *, reference: bool = False, weights=None):
    """A compiled HARModel (lam 10, per-class tau) on `cifar_resnet(**spec)` in `dtype`.

    `reference=True` builds every BN on Keras's autodiffed path (see the module
    docstring). `weights` (a list of arrays, any float dtype) replaces the seeded
    initial weights.
    """
    with floatx(dtype):
        keras.utils.set_random_seed(0)
        backbone = cifar_resnet(num_classes=NUM_CLASSES, synchronized_bn=reference, **spec)
        model = harness.har_model(backbone, lam=LAM, tau=TAU)
    if weights is not None:
        model.set_weights([np.asarray(w, dtype) for w in weights])
    return model


def batch(spec: dict, size: int, seed: int = 0):
    """(x [size, H, W, 3] float64, y [size] int) drawn with `seed`."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(size, *spec["input_shape"]))
    return x, rng.integers(0, NUM_CLASSES, size)


def pieces(model, x, y) -> dict:
    """loss, reg (mean of tau * R), the weight gradients of the loss ("grads") and
    of the regularizer's term alone ("reg_grads": those minus the gradients of the
    cross-entropy), as numpy, with the weights' names.

    Training mode, as a training step computes them; `x` is cast to the model's dtype.
    """
    x = tf.constant(x, model.trainable_weights[0].dtype)
    with tf.GradientTape(persistent=True) as tape:
        objective = model.regularized_loss(x, y)
    grads = tape.gradient(objective.loss, model.trainable_weights)
    ce_grads = tape.gradient(objective.ce, model.trainable_weights)
    del tape
    return {
        "loss": float(objective.loss),
        "reg": None if objective.reg is None else float(objective.reg),
        "grads": [np.asarray(g) for g in grads],
        "reg_grads": [np.asarray(g - c) for g, c in zip(grads, ce_grads, strict=True)],
        "names": [w.path for w in model.trainable_weights],
    }


def relative_errors(got: dict, want: dict) -> dict:
    """|a - b| / |b| for loss and reg; for "grads" and "reg_grads" the worst
    tensor's max |a - b| / max |b|, and the names of those tensors."""
    errors = {k: abs(got[k] - want[k]) / abs(want[k]) for k in ("loss", "reg")}
    for key in ("grads", "reg_grads"):
        per_tensor = [
            float(np.abs(a - b).max() / np.abs(b).max())
            for a, b in zip(got[key], want[key], strict=True)
        ]
        worst = int(np.argmax(per_tensor))
        errors[key] = per_tensor[worst]
        errors[f"{key}_worst"] = want["names"][worst]
    return errors


def pieces_in_child(spec: dict, weights, x, y, onednn: str, tmp_dir) -> tuple[dict, bool]:
    """`pieces` of the float32 model, computed in a fresh interpreter with
    `TF_ENABLE_ONEDNN_OPTS=onednn`; also whether that TensorFlow ran oneDNN."""
    given, result = os.path.join(tmp_dir, "in.npz"), os.path.join(tmp_dir, "out.npz")
    np.savez(
        given,
        x=x,
        y=y,
        spec=json.dumps(spec),
        **{f"w{i}": w for i, w in enumerate(weights)},
    )
    env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS=onednn, TF_CPP_MIN_LOG_LEVEL="2")
    out = subprocess.run(
        [sys.executable, "-m", "tests.har_tf.exactness", given, result],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    with np.load(result) as f:
        n = len(f["names"])
        got = {
            "loss": float(f["loss"]),
            "reg": float(f["reg"]),
            "grads": [f[f"g{i}"] for i in range(n)],
            "reg_grads": [f[f"r{i}"] for i in range(n)],
            "names": [str(name) for name in f["names"]],
        }
        return got, bool(f["onednn"])


def _child(given: str, result: str) -> None:
    from tensorflow.python.util import _pywrap_util_port  # noqa: PLC0415

    with np.load(given) as f:
        spec = json.loads(str(f["spec"]))
        n = sum(k.startswith("w") for k in f.files)
        model = har_model(spec, "float32", weights=[f[f"w{i}"] for i in range(n)])
        got = pieces(model, f["x"], f["y"])
    np.savez(
        result,
        loss=got["loss"],
        reg=got["reg"],
        names=np.array(got["names"]),
        onednn=bool(_pywrap_util_port.IsMklEnabled()),
        **{f"g{i}": g for i, g in enumerate(got["grads"])},
        **{f"r{i}": g for i, g in enumerate(got["reg_grads"])},
    )


if __name__ == "__main__":
    _child(*sys.argv[1:3])
