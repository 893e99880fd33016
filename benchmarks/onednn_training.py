r"""Does oneDNN on vs off change training outcomes beyond seed noise?

Runs the whole pipeline (`python -m pipeline.run`) once per seed and per
`TF_ENABLE_ONEDNN_OPTS` setting, each in its own work directory, and prints each
run's test accuracy (overall and per group) from evaluate/report.json, then, per run
name, the mean over seeds of the on - off difference (paired by seed) against the
standard deviation over seeds of each setting. The config's seed draws the noise,
the split and the initial weights; with the same seed the two settings differ only
in how their kernels round.

  python benchmarks/onednn_training.py --workdir /tmp/onednn_training \
      --config configs/fashion_mnist_hetero.py:smoke --seeds 0 1 2

A work directory already holding a finished run is reused (the pipeline skips
complete stages). Figures: docs/EXACTNESS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETTINGS = ("1", "0")


def run_one(config: str, workdir: str, seed: int, setting: str) -> dict:
    """The report's test accuracies of every run of one pipeline run."""
    env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS=setting, TF_CPP_MIN_LOG_LEVEL="2")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.run",
            f"--config={config}",
            f"--workdir={workdir}",
            f"--config.seed={seed}",
        ],
        cwd=REPO,
        env=env,
        check=True,
    )
    with open(os.path.join(workdir, "evaluate", "report.json")) as f:
        report = json.load(f)
    return {
        name: {"overall": run["test"]["overall"], **run["test"]["groups"]}
        for name, run in report["runs"].items()
    }


def summarize(results: dict) -> dict:
    """Per run name and metric: mean paired on - off difference and each setting's
    standard deviation over seeds. `results[setting][seed][run][metric]`."""
    seeds = sorted(results["1"])
    out = {}
    for run, metrics in results["1"][seeds[0]].items():
        for metric in metrics:
            values = {s: [results[s][seed][run][metric] for seed in seeds] for s in SETTINGS}
            diff = np.subtract(values["1"], values["0"])
            out[f"{run}/{metric}"] = {
                "on": values["1"],
                "off": values["0"],
                "mean_on_minus_off": float(diff.mean()),
                "sd_over_seeds_on": float(np.std(values["1"], ddof=1)) if len(seeds) > 1 else None,
                "sd_over_seeds_off": float(np.std(values["0"], ddof=1)) if len(seeds) > 1 else None,
            }
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True, help="one subdirectory per run")
    parser.add_argument("--config", default="configs/fashion_mnist_hetero.py:smoke")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    results = {s: {} for s in SETTINGS}
    for seed in args.seeds:
        for setting in SETTINGS:
            workdir = os.path.join(os.path.abspath(args.workdir), f"seed{seed}_onednn{setting}")
            results[setting][seed] = run_one(args.config, workdir, seed, setting)
            print(f"seed {seed} oneDNN {setting}: {results[setting][seed]}", flush=True)
    summary = {"config": args.config, "seeds": args.seeds, "summary": summarize(results)}
    print(json.dumps(summary, indent=None if args.json else 1))


if __name__ == "__main__":
    main()
