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
import importlib
import os
import sys
import time

from absl import app, flags

from pipeline import cli, push
from pipeline.config_check import check_config
from pipeline.core import stage, workdir_lock
from pipeline.training import multi_worker

# The function that makes each stage (stage.REGISTRY names its module): importing
# them here, in the application layer, keeps pipeline.core.stage free of upward imports.
STAGE_RUNS = {s.name: importlib.import_module(s.module).run for s in stage.REGISTRY}


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
    names = stage.needed_stages(config)
    options = {"beam_args": beam_args, "force_push": force_push}
    # One process at a time in a workdir (refuses at once if another holds it).
    fps = stage.fingerprints(config)
    with workdir_lock.held(workdir):
        rerun = force
        for name in names:
            record = stage.BY_NAME[name]
            forced = (
                force
                or bool(record.forcing_option and options[record.forcing_option])
                or (bool(from_stage) and stage.STAGES.index(name) >= stage.STAGES.index(from_stage))
            )
            rerun = rerun or forced
            start = time.time()
            run = functools.partial(
                STAGE_RUNS[name], config, workdir, **{o: options[o] for o in record.options}
            )
            # forced: start afresh rather than resume an interrupted attempt.
            ran = stage.ensure(
                workdir,
                name,
                fps[name],
                run,
                force=rerun,
                fresh=forced,
                on_run=functools.partial(_announce, workdir, name),
            )
            if not ran:
                print(f"== {name}: complete, skipped")
                continue
            # Everything after a stage that runs depends on its new output.
            rerun = True
            print(f"== {name}: done in {time.time() - start:.0f} s")


def _announce(workdir: str, name: str, found: str) -> None:
    """What run_pipeline prints before a stage runs, given its state (stage.state)."""
    if found == "incomplete":
        # metadata.json is there, but an output is missing or unreadable.
        why = stage.why_incomplete(workdir, name)
        print(f"stage {name} is incomplete: {why}; rerunning it", file=sys.stderr)
    why = {"missing": "running", "stale": "stale, rerunning"}.get(found, "rerunning")
    print(f"== {name}: {why}")


def main(argv):
    del argv
    FLAGS = flags.FLAGS
    try:
        run_pipeline(
            cli.config_from_flags(),
            FLAGS.workdir,
            force=FLAGS.force,
            from_stage=FLAGS.from_stage,
            **cli.option_values(stage.STAGES),
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
    cli.define_option_flags(stage.STAGES)
    flags.DEFINE_string(
        "from_stage",
        "",
        f"Rerun this stage and every later one (one of {', '.join(stage.STAGES)}).",
    )
    app.run(main, flags_parser=cli.parse_flags)
