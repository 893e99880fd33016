r"""Where a HAR training step spends its time: TF profiler totals by op type.

Runs a few ERM and HAR steps of ResNet-32 (batch 128, 32x32x3, as
benchmarks/step_time.py) under `tf.profiler.experimental`, reads the host trace
(XPlane protobuf) back and sums the time of every TensorFlow op by its type
(Conv2D, Conv2DBackpropInput, Mul, ...). Prints, per kind, ms per step for the
top op types, and the HAR - ERM difference; `--json` prints the same as JSON.

Op times are summed over the threads that ran them, so with inter-op
parallelism a step's op total can exceed its wall time; compare kinds and op
types, not op totals with wall times.

  python benchmarks/profile_step.py --steps 5 --top 15
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# First: importing har_tf turns oneDNN on before TensorFlow loads (har_tf/onednn.py).
import har_tf  # noqa: E402,F401

# isort: split
import tensorflow as tf  # noqa: E402
from tensorflow.tsl.profiler.protobuf import xplane_pb2  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import step_time  # noqa: E402


def op_totals(logdir: str) -> dict[str, float]:
    """Microseconds per op type summed over the trace's TF op events."""
    (path,) = glob.glob(os.path.join(logdir, "plugins", "profile", "*", "*.xplane.pb"))
    space = xplane_pb2.XSpace()
    with open(path, "rb") as f:
        space.ParseFromString(f.read())
    totals: dict[str, float] = collections.defaultdict(float)
    for plane in space.planes:
        if not plane.name.startswith("/host:CPU"):
            continue
        names = {k: v.name for k, v in plane.event_metadata.items()}
        for line in plane.lines:
            for event in line.events:
                name = names.get(event.metadata_id, "")
                # TF ops are named "<scope>/<name>:<OpType>".
                # Skip tf.data, runtime events ("Foo::Bar") and whole functions
                # ("__inference_..."), whose ops are counted on their own.
                if ":" not in name or name.startswith("tf_data") or "::" in name:
                    continue
                op_type = name.rsplit(":", 1)[1].strip()
                if op_type.startswith("__inference"):
                    continue
                totals[op_type] += event.duration_ps / 1e6
    return dict(totals)


def profile(kind: str, args) -> dict[str, float]:
    """ms per step, by op type, for one kind of step."""
    model = step_time.build(kind, args)
    x, y = step_time.batch(args)
    step_time.time_steps(model, x, y, 2)  # trace and warm up
    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        step_time.time_steps(model, x, y, args.steps)
        tf.profiler.experimental.stop()
        totals = op_totals(logdir)
    return {op: us / 1e3 / args.steps for op, us in totals.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--model", choices=("resnet32", "bilstm"), default="resnet32")
    parser.add_argument("--seq_len", type=int, default=256)
    parser.add_argument("--depth", type=int, default=32)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = {kind: profile(kind, args) for kind in ("erm", "har")}
    ops = sorted(
        set(result["erm"]) | set(result["har"]),
        key=lambda o: -max(result["har"].get(o, 0), result["erm"].get(o, 0)),
    )
    if args.json:
        print(json.dumps(result, indent=1, sort_keys=True))
        return
    print(f"{'op type':32s} {'erm ms':>9s} {'har ms':>9s} {'har-erm':>9s}")
    for op in ops[: args.top]:
        erm, har = result["erm"].get(op, 0.0), result["har"].get(op, 0.0)
        print(f"{op:32s} {erm:9.1f} {har:9.1f} {har - erm:9.1f}")
    erm_total, har_total = sum(result["erm"].values()), sum(result["har"].values())
    print(f"{'all ops':32s} {erm_total:9.1f} {har_total:9.1f} {har_total - erm_total:9.1f}")


if __name__ == "__main__":
    main()
