r"""Examples/s of the tf.data training input, against what a HAR step consumes.

Iterates one epoch of `pipeline.data.datasets.make_dataset` (parse, batch, pad-crop-flip
augmentation, cast) over the train records of a preprocessed workdir, `--runs`
times, and reports the median. With `--har_step` it also times ResNet-32 HAR train
steps at the same batch size on 32x32x3 inputs (benchmarks/step_time.py's model)
and reports how many times faster the input is than the step consumes it.

  python benchmarks/input_throughput.py --workdir runs/quickstart --har_step --json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from pipeline.data import datasets  # noqa: E402


def epoch_rate(workdir: str, batch_size: int, augment: bool) -> float:
    ds = datasets.make_dataset(
        workdir, "train", batch_size=batch_size, training=True, augment=augment
    )
    start, n = time.perf_counter(), 0
    for images, _ in ds:
        n += int(images.shape[0])
    return n / (time.perf_counter() - start)


def har_step_rate(batch_size: int, steps: int = 5) -> float:
    spec = importlib.util.spec_from_file_location("step_time", os.path.join(HERE, "step_time.py"))
    step_time = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(step_time)
    args = argparse.Namespace(depth=32, batch=batch_size)
    model = step_time.build("har", args)
    x, y = step_time.batch(args)
    step_time.time_steps(model, x, y, 2)  # warm-up
    return batch_size / step_time.time_steps(model, x, y, steps)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True, help="a workdir whose preprocess completed")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--har_step", action="store_true", help="also time HAR steps")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = {}
    for augment in (True, False):
        rates = [epoch_rate(args.workdir, args.batch, augment) for _ in range(args.runs)]
        result["augmented_per_s" if augment else "plain_per_s"] = round(statistics.median(rates))
    if args.har_step:
        consumed = har_step_rate(args.batch)
        result["har_step_consumes_per_s"] = round(consumed, 1)
        result["input_over_har_step"] = round(result["augmented_per_s"] / consumed, 1)
    print(json.dumps(result) if args.json else "\n".join(f"{k}: {v}" for k, v in result.items()))


if __name__ == "__main__":
    main()
