r"""How far rounding moves HAR's weight gradient on a ReLU network: oneDNN on vs off.

HAR's weight gradient of a ReLU network depends on which units are active, so it
jumps where a unit's input crosses zero. oneDNN's convolutions round differently
from Eigen's, and a unit whose input lies within rounding of zero can switch
between the two. This script measures that on a ReLU ResNet (Keras init, lambda 10,
a per-class tau): the same weights and batches go to two fresh interpreters, one
with `TF_ENABLE_ONEDNN_OPTS=1` and one with `0`, each computing in float32 the
training-mode pre-activation of every ReLU, loss, reg (mean of tau * R) and every
weight gradient of the HAR objective; this process computes the same in float64.
It reports, per batch: the units whose pre-activation has a different sign between
oneDNN on and off, and the relative differences (max |a - b| / max |b|) of loss, reg
and the worst weight gradient for on vs off, on vs float64 and off vs float64, then
the medians over batches.

  python benchmarks/kink_effect.py                       # ResNet-32, 5 batches of 16
  python benchmarks/kink_effect.py --batches 3 --activation softplus --json

`--activation softplus` is the control: no kinks, so the differences are rounding
alone (tests/har_tf/test_exactness.py asserts that case). Figures: docs/EXACTNESS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
# First: importing har_tf turns oneDNN on before TensorFlow loads (har_tf/onednn.py),
# unless the variable is set (the children get it from their parent).
import har_tf  # noqa: E402,F401

# isort: split
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from har_tf import HARModel  # noqa: E402
from har_tf.models import cifar_resnet  # noqa: E402

NUM_CLASSES = 10


def build(args, dtype: str, weights=None) -> HARModel:
    """The HAR model of the run (seeded init, or `weights`) in `dtype`."""
    keras.config.set_floatx(dtype)
    keras.config.set_dtype_policy(dtype)
    keras.utils.set_random_seed(args.seed)
    backbone = cifar_resnet(
        depth=args.depth,
        input_shape=(args.size, args.size, 3),
        num_classes=NUM_CLASSES,
        activation=args.activation,
    )
    model = HARModel(backbone, lam=args.lam, tau=np.linspace(0.2, 1.0, NUM_CLASSES))
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    if weights is not None:
        model.set_weights([np.asarray(w, dtype) for w in weights])
    return model


def activation_inputs(backbone: keras.Model) -> keras.Model:
    """A view of `backbone` returning the input of each activation layer."""
    names = [
        n
        for n in (layer.name for layer in backbone.layers)
        if n.endswith(("_relu", "_relu1", "_out"))
    ]
    return keras.Model(backbone.input, [backbone.get_layer(n).input for n in names])


def measure(model: HARModel, x, y) -> dict:
    """Pre-activations (flattened, one array), loss, reg and weight gradients."""
    x = tf.constant(x, model.trainable_weights[0].dtype)
    pre = activation_inputs(model.backbone)(x, training=True)
    with tf.GradientTape() as tape:
        objective = model.regularized_loss(x, y)
    grads = tape.gradient(objective.loss, model.trainable_weights)
    return {
        "pre": np.concatenate([np.ravel(p) for p in pre]),
        "loss": float(objective.loss),
        "reg": float(objective.reg),
        "grads": [np.asarray(g) for g in grads],
    }


def compare(a: dict, b: dict) -> dict:
    """Relative differences of a from b: loss, reg, worst and median weight gradient."""
    per_tensor = [
        float(np.abs(ga - gb).max() / np.abs(gb).max())
        for ga, gb in zip(a["grads"], b["grads"], strict=True)
    ]
    return {
        "loss": abs(a["loss"] - b["loss"]) / abs(b["loss"]),
        "reg": abs(a["reg"] - b["reg"]) / abs(b["reg"]),
        "worst_grad": max(per_tensor),
        "median_grad": float(np.median(per_tensor)),
        "tensors_over_1e-3": int(sum(e > 1e-3 for e in per_tensor)),
    }


def child(given: str, result: str) -> None:
    """Computes `measure` for every batch of `given` in float32; writes `result`."""
    from tensorflow.python.util import _pywrap_util_port  # noqa: PLC0415

    with np.load(given, allow_pickle=False) as f:
        args = argparse.Namespace(**json.loads(str(f["args"])))
        weights = [f[f"w{i}"] for i in range(int(f["num_weights"]))]
        batches = [(f[f"x{b}"], f[f"y{b}"]) for b in range(args.batches)]
    model = build(args, "float32", weights)
    out = {"onednn": bool(_pywrap_util_port.IsMklEnabled())}
    for b, (x, y) in enumerate(batches):
        m = measure(model, x, y)
        out.update({f"pre{b}": m["pre"], f"loss{b}": m["loss"], f"reg{b}": m["reg"]})
        out.update({f"g{b}_{i}": g for i, g in enumerate(m["grads"])})
    np.savez(result, **out)


def run_child(setting: str, given: str, tmp: str, args) -> list[dict]:
    result = os.path.join(tmp, f"onednn{setting}.npz")
    env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS=setting)
    subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--child", given, result],
        env=env,
        check=True,
    )
    with np.load(result) as f:
        if bool(f["onednn"]) != (setting == "1"):
            raise RuntimeError(f"TF_ENABLE_ONEDNN_OPTS={setting} did not take effect")
        n = len([k for k in f.files if k.startswith("g0_")])
        return [
            {
                "pre": f[f"pre{b}"],
                "loss": float(f[f"loss{b}"]),
                "reg": float(f[f"reg{b}"]),
                "grads": [f[f"g{b}_{i}"] for i in range(n)],
            }
            for b in range(args.batches)
        ]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--depth", type=int, default=32)
    parser.add_argument("--size", type=int, default=32, help="image height and width")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--batches", type=int, default=5)
    parser.add_argument("--lam", type=float, default=10.0)
    parser.add_argument("--activation", default="relu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    config = {k: v for k, v in vars(args).items() if k not in ("child", "json")}
    weights = build(args, "float32").get_weights()
    rng = np.random.default_rng(args.seed)
    batches = [
        (
            rng.normal(size=(args.batch, args.size, args.size, 3)),
            rng.integers(0, NUM_CLASSES, args.batch),
        )
        for _ in range(args.batches)
    ]
    with tempfile.TemporaryDirectory() as tmp:
        given = os.path.join(tmp, "given.npz")
        np.savez(
            given,
            args=json.dumps(config),
            num_weights=len(weights),
            **{f"w{i}": w for i, w in enumerate(weights)},
            **{f"x{b}": x for b, (x, _) in enumerate(batches)},
            **{f"y{b}": y for b, (_, y) in enumerate(batches)},
        )
        on, off = (run_child(s, given, tmp, args) for s in ("1", "0"))
    reference = build(args, "float64", weights)
    rows = []
    for b, (x, y) in enumerate(batches):
        f64 = measure(reference, x, y)
        flips = np.sign(on[b]["pre"]) != np.sign(off[b]["pre"])
        rows.append(
            {
                "batch": b,
                "units": int(flips.size),
                "flips_on_off": int(flips.sum()),
                "flips_on_f64": int((np.sign(on[b]["pre"]) != np.sign(f64["pre"])).sum()),
                "flips_off_f64": int((np.sign(off[b]["pre"]) != np.sign(f64["pre"])).sum()),
                "on_vs_off": compare(on[b], off[b]),
                "on_vs_f64": compare(on[b], f64),
                "off_vs_f64": compare(off[b], f64),
            }
        )
    summary = {"config": config, "batches": rows, "median": _medians(rows)}
    if args.json:
        print(json.dumps(summary))
        return
    print(f"{config}")
    for row in rows:
        print(json.dumps(row))
    print("median over batches:", json.dumps(summary["median"]))


def _medians(rows) -> dict:
    out = {
        k: float(np.median([r[k] for r in rows]))
        for k in ("flips_on_off", "flips_on_f64", "flips_off_f64")
    }
    for pair in ("on_vs_off", "on_vs_f64", "off_vs_f64"):
        out[pair] = {k: float(np.median([r[pair][k] for r in rows])) for k in rows[0][pair]}
    return out


if __name__ == "__main__":
    main()
