"""Runs the whole pipeline: preprocess -> pretrain -> estimate_tau -> train ->
evaluate -> export -> push, and prints the results table (with each run's blessing)
and what the push did.

A stage already complete in --workdir with the fingerprint the current config gives
(stage.fingerprints) is skipped. A stale one (another config or input) is rerun, and
so is every later stage; the old output is moved to `<stage>.stale-<time>` and
deleted once the new one is complete. A stage that was interrupted resumes (training
stages from their last completed epoch). A complete stage with an output missing or
unreadable (stage.why_incomplete) is reported and rerun, with every later stage.

  python -m pipeline.run --config=configs/fashion_mnist_hetero.py:quick \
      --workdir=runs/quickstart
  ... --force                 # rerun every stage
  ... --from_stage=train      # rerun train and every later stage
  ... --force_push            # push even an unblessed model (reruns push)
"""

from __future__ import annotations

import functools
import os
import shlex
import sys
import time

from absl import app, flags, logging

from pipeline import cli, estimate_tau, evaluate, export, preprocess, pretrain, push, train
from pipeline.config_check import check_config
from pipeline.core import stage, workdir_lock
from pipeline.training import multi_worker

STAGE_RUNS = {
    "preprocess": preprocess.run,
    "pretrain": pretrain.run,
    "estimate_tau": estimate_tau.run,
    "train": train.run,
    "evaluate": evaluate.run,
    "export": export.run,
    "push": push.run,
}
assert tuple(STAGE_RUNS) == stage.STAGES


def needed_stages(config) -> list[str]:
    """Stages this config needs: estimate_tau (and pretrain) only if a run uses HAR."""
    needs_tau = stage.uses_tau(config)
    return [s for s in stage.STAGES if needs_tau or s not in ("pretrain", "estimate_tau")]


def run_pipeline(
    config,
    workdir: str,
    *,
    beam_args=(),
    force: bool = False,
    from_stage: str = "",
    force_push: bool = False,
) -> None:
    """Runs every needed stage that is missing or stale, and every stage after it.

    Args:
      force: rerun every stage (from scratch: no resuming of interrupted attempts).
      from_stage: rerun this stage and every later one (a name of stage.STAGES), from
        scratch.
      force_push: push even a model that is not blessed (pipeline.push); reruns push.

    Raises:
      PipelineError: a stage failed, or from_stage names no stage.
    """
    if from_stage and from_stage not in stage.STAGES:
        raise stage.PipelineError(
            f"unknown --from_stage={from_stage!r}; stages: {', '.join(stage.STAGES)}"
        )
    check_config(config)
    for section in ("pretrain", "train"):
        if multi_worker.uses_workers(config[section]):
            raise stage.PipelineError(
                f"config.{section}.strategy is 'multi_worker': pipeline.run runs every stage "
                f"in one process; run the stages alone instead, `python -m pipeline.{section}` "
                "on every worker (docs/DISTRIBUTED.md)"
            )
    names = needed_stages(config)
    # One process at a time in a workdir (refuses at once if another holds it).
    fps = stage.fingerprints(config)
    with workdir_lock.held(workdir):
        rerun = force
        for name in names:
            forced = (
                force
                or (name == "push" and force_push)
                or (bool(from_stage) and stage.STAGES.index(name) >= stage.STAGES.index(from_stage))
            )
            rerun = rerun or forced
            state = stage.state(workdir, name, fps[name])
            if state == "current" and not rerun:
                logging.info("Stage %s: already complete, skipping.", name)
                print(f"== {name}: complete, skipped")
                continue
            # Everything after a stage that runs depends on its new output.
            rerun = True
            if state == "incomplete":
                # metadata.json is there, but an output is missing or unreadable.
                why = stage.why_incomplete(workdir, name)
                print(f"stage {name} is incomplete: {why}; rerunning it", file=sys.stderr)
            why = {"missing": "running", "stale": "stale, rerunning"}.get(state, "rerunning")
            print(f"== {name}: {why}")
            start = time.time()
            if name == "preprocess":
                run = functools.partial(preprocess.run, config, workdir, beam_args=beam_args)
            elif name == "push":
                run = functools.partial(STAGE_RUNS[name], config, workdir, force_push=force_push)
            else:
                run = functools.partial(STAGE_RUNS[name], config, workdir)
            # forced: start afresh rather than resume an interrupted attempt.
            stage.run_replacing(workdir, name, run, fresh=forced)
            print(f"== {name}: done in {time.time() - start:.0f} s")


def main(argv):
    del argv
    FLAGS = flags.FLAGS
    try:
        run_pipeline(
            cli.config_from_flags(),
            FLAGS.workdir,
            beam_args=shlex.split(FLAGS.beam_args),
            force=FLAGS.force,
            from_stage=FLAGS.from_stage,
            force_push=FLAGS.force_push,
        )
    except stage.PipelineError as e:
        cli.fail(e)
    report = os.path.join(stage.stage_dir(FLAGS.workdir, "evaluate"), "report.md")
    with open(report) as f:
        print(f.read())
    print(f"Report: {report}")
    record = push.read(FLAGS.workdir)
    if record is not None:
        print(push.summary(record))


if __name__ == "__main__":
    cli.define_common_flags()
    flags.DEFINE_string("beam_args", "", "Extra Beam pipeline options for preprocess.")
    flags.DEFINE_string(
        "from_stage",
        "",
        f"Rerun this stage and every later one (one of {', '.join(stage.STAGES)}).",
    )
    push.define_flags()
    app.run(main, flags_parser=cli.parse_flags)
