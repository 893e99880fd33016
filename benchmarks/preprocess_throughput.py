r"""Records/s of the preprocess stage (Beam job + TFRecord writing) on Fashion-MNIST.

Runs `pipeline.preprocess.run` with the default experiment config (60,000 train and
10,000 test source images, noise + step cut, 4 shards per split) into fresh
temporary workdirs, `--runs` times, and reports the median wall time of the stage
(imports and TensorFlow start-up excluded) and records per second.

  python benchmarks/preprocess_throughput.py --json
  python benchmarks/preprocess_throughput.py --data_dir /path/to/idx --runs 5
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import fashion_mnist_hetero  # noqa: E402
from pipeline import preprocess  # noqa: E402
from pipeline.core import stage  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data_dir", default="", help="IDX directory (default: the usual lookup)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--beam_args", default="", help="extra Beam options")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    config = fashion_mnist_hetero.get_config()
    config.data.data_dir = args.data_dir
    times, manifest = [], None
    for _ in range(args.runs):
        workdir = tempfile.mkdtemp(prefix="har_pre_")
        try:
            start = time.perf_counter()
            preprocess.run(config, workdir, beam_args=args.beam_args.split())
            times.append(time.perf_counter() - start)
            manifest = stage.read_json(os.path.join(workdir, "preprocess", "manifest.json"))
        finally:
            shutil.rmtree(workdir)
    splits = manifest["splits"]
    written = sum(s["num_examples"] for s in splits.values())
    source = sum(s["num_source_examples"] for s in splits.values())
    median = statistics.median(times)
    result = {
        "median_s": round(median, 3),
        "runs_s": [round(t, 3) for t in times],
        "records_written": written,
        "source_examples": source,
        "written_per_s": round(written / median),
        "source_per_s": round(source / median),
    }
    print(json.dumps(result) if args.json else "\n".join(f"{k}: {v}" for k, v in result.items()))


if __name__ == "__main__":
    main()
