"""Runs the whole pipeline: preprocess -> pretrain -> estimate_tau -> train ->
evaluate -> export, skipping every stage that already completed in --workdir, and
prints the results table.

  python -m pipeline.run --config=configs/fashion_mnist_hetero.py:quick \
      --workdir=runs/quickstart
"""

from __future__ import annotations

import os
import shlex
import sys
import time

from absl import app, flags, logging

from pipeline import estimate_tau, evaluate, export, preprocess, pretrain, stage, train

STAGE_RUNS = {
    "preprocess": preprocess.run,
    "pretrain": pretrain.run,
    "estimate_tau": estimate_tau.run,
    "train": train.run,
    "evaluate": evaluate.run,
    "export": export.run,
}
assert tuple(STAGE_RUNS) == stage.STAGES


def needed_stages(config) -> list[str]:
    """Stages this config needs: estimate_tau (and pretrain) only if a run uses HAR."""
    needs_tau = any(r.regularizer == "har" for r in config.train.runs.values())
    return [s for s in stage.STAGES if needs_tau or s not in ("pretrain", "estimate_tau")]


def run_pipeline(config, workdir: str, *, beam_args=()) -> None:
    os.makedirs(workdir, exist_ok=True)
    for name in needed_stages(config):
        if stage.is_complete(workdir, name):
            logging.info("Stage %s: already complete, skipping.", name)
            print(f"== {name}: complete, skipped")
            continue
        print(f"== {name}: running")
        start = time.time()
        if name == "preprocess":
            preprocess.run(config, workdir, beam_args=beam_args)
        else:
            STAGE_RUNS[name](config, workdir)
        print(f"== {name}: done in {time.time() - start:.0f} s")


def main(argv):
    del argv
    FLAGS = flags.FLAGS
    try:
        run_pipeline(FLAGS.config, FLAGS.workdir, beam_args=shlex.split(FLAGS.beam_args))
    except stage.PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    report = os.path.join(stage.stage_dir(FLAGS.workdir, "evaluate"), "report.md")
    with open(report) as f:
        print(f.read())
    print(f"Report: {report}")


if __name__ == "__main__":
    from pipeline import cli

    cli.define_common_flags()
    flags.DEFINE_string("beam_args", "", "Extra Beam pipeline options for preprocess.")
    app.run(main)
