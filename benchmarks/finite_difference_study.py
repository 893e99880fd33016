r"""Can a finite difference replace HAR's double backprop? Measured: not for ReLU nets.

HAR's regularizer gradient is d/dw <v, g(w)>, with g the loss gradients at the
tapped activations h and v = d(lam * reg) / dg held fixed. <v, g> is the
directional derivative of the loss when every tap moves along v, so

    grad_w(reg) = d/de grad_w L(w; h + e v) at e = 0
                ~ (grad_w L(w; h + e v) - grad_w L(w; h)) / e,

two first-order passes (about 2x an ERM step, an ERM step's memory) instead of one
double backward pass. This script implements that estimate for a HARModel (pass B
repeats pass A with the taps shifted, the non-trainable state, moving statistics
and seed generators included, restored around it) and compares it with the exact
gradient of `HARModel` for a range of steps e (the shift's norm is e times the
taps' norm), in float32 and float64:

  python benchmarks/finite_difference_study.py            # both dtypes
  python benchmarks/finite_difference_study.py --dtype float32 --json

It prints, per e, the relative error of the estimated regularizer gradient
(||fd - exact|| / ||exact - erm|| over all weights) and its cosine with the exact one.
The estimate is not part of the library: docs/PERFORMANCE.md has the figures
and why (the gradient of a ReLU network jumps where a unit switches).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# First: importing har_tf turns oneDNN on before TensorFlow loads (har_tf/onednn.py).
import har_tf  # noqa: E402,F401

# isort: split
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from keras.src.models import functional as keras_functional  # noqa: E402

from har_tf import HARModel  # noqa: E402
from har_tf.models import cifar_resnet  # noqa: E402


def shifted_logits(model: HARModel, x, shifts):
    """The backbone's training-mode logits with shifts[name] added to each tap."""

    def operation(op):
        call = keras_functional.operation_fn(op, training=True)
        if op.name not in shifts:
            return call
        return lambda *args, **kwargs: call(*args, **kwargs) + shifts[op.name]

    return model.objective.tap_model._run_through_graph(x, operation_fn=operation)[0]


def finite_difference_gradients(model: HARModel, x, y, epsilon: float):
    """The HAR step's weight gradients with the regularizer's by a forward difference."""
    sample_weight = model.objective.loss_weights(y, None)
    state = model.non_trainable_variables
    before = [tf.identity(v) for v in state]
    weights = model.trainable_weights

    def loss_of(logits):
        ce = model.objective.ce(x, y, logits, sample_weight, training=True)
        return model.objective.with_weight_decay(ce)

    with tf.GradientTape() as tape:
        outputs = model.objective.tap_model(x, training=True)
        taps = list(outputs[1:])
        tape.watch(taps)
        loss = loss_of(outputs[0])
    grads = tape.gradient(loss, weights + taps, unconnected_gradients="zero")
    weight_grads, tap_grads = grads[: len(weights)], grads[len(weights) :]
    with tf.GradientTape() as penalty_tape:
        penalty_tape.watch(tap_grads)
        _, _, reg_loss = model.objective.penalty(tap_grads, y, None, model.lam, None)
    direction = penalty_tape.gradient(reg_loss, tap_grads)
    v_norm = tf.sqrt(tf.add_n([tf.reduce_sum(tf.square(v)) for v in direction]))
    h_norm = tf.sqrt(tf.add_n([tf.reduce_sum(tf.square(h)) for h in taps]))
    step = epsilon * h_norm / v_norm
    shifts = {name: step * v for name, v in zip(model.tap_layers, direction, strict=True)}

    after = [tf.identity(v) for v in state]
    for var, value in zip(state, before, strict=True):
        var.assign(value)
    with tf.GradientTape() as tape:
        shifted_loss = loss_of(shifted_logits(model, x, shifts))
    shifted = tape.gradient(shifted_loss, weights, unconnected_gradients="zero")
    for var, value in zip(state, after, strict=True):
        var.assign(value)
    return [g + (s - g) / step for g, s in zip(weight_grads, shifted, strict=True)]


def study(dtype: str, epsilons, args) -> list[dict]:
    keras.config.set_floatx(dtype)
    keras.config.set_dtype_policy(dtype)
    rng = np.random.default_rng(0)
    x = tf.constant(rng.uniform(size=(args.batch, args.size, args.size, 3)).astype(dtype))
    y = tf.constant(rng.integers(0, 10, size=args.batch))

    def fresh():
        keras.utils.set_random_seed(0)
        model = HARModel(
            cifar_resnet(depth=args.depth, input_shape=(args.size, args.size, 3)),
            lam=10.0,
            tau=np.linspace(0.1, 1.0, 10),
            weight_decay=1e-4,
        )
        model.compile(
            optimizer=keras.optimizers.SGD(0.1),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        return model

    def flat(grads):
        return np.concatenate([np.ravel(g) for g in grads]).astype(np.float64)

    exact = flat(fresh().step_gradients(x, y, lam=10.0)[4])
    erm = flat(fresh().step_gradients(x, y, lam=0.0)[4])
    rows = []
    for eps in epsilons:
        fd = flat(finite_difference_gradients(fresh(), x, y, eps))
        reg_exact, reg_fd = exact - erm, fd - erm
        rows.append(
            {
                "dtype": dtype,
                "epsilon": eps,
                "rel_error": float(np.linalg.norm(fd - exact) / np.linalg.norm(reg_exact)),
                "cosine": float(
                    reg_fd @ reg_exact / (np.linalg.norm(reg_fd) * np.linalg.norm(reg_exact))
                ),
            }
        )
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dtype", choices=("float32", "float64", "both"), default="both")
    parser.add_argument("--depth", type=int, default=8)
    parser.add_argument("--size", type=int, default=8, help="input height and width")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    epsilons = [10.0**-k for k in range(2, 9)]
    dtypes = ("float32", "float64") if args.dtype == "both" else (args.dtype,)
    rows = [row for dtype in dtypes for row in study(dtype, epsilons, args)]
    if args.json:
        print(json.dumps(rows))
        return
    print(f"{'dtype':8s} {'epsilon':>8s} {'rel. error':>11s} {'cosine':>8s}")
    for row in rows:
        print(
            f"{row['dtype']:8s} {row['epsilon']:8.0e} {row['rel_error']:11.3g} {row['cosine']:8.3f}"
        )


if __name__ == "__main__":
    main()
