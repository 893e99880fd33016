r"""The study runner: seeds x settings x methods (x lambda grids) as ordinary stages.

  python -m pipeline.study --config=configs/studies/fm_hetero.py --workdir=DIR
  ... --max_jobs=5         # stop after 5 training runs (exit status 75 if work is left)
  ... --aggregate_only     # write DIR/study/ from what has finished (marked partial)
  ... --settings=noaug     # only these settings' runs (a second process, beside one
                           # that runs the others)

A user's guide: docs/STUDY.md.

Layout: one preprocess / pretrain / estimate_tau per (setting, seed) in
DIR/cells/<setting>/seed<k>/, shared by its runs; each training run is a train stage in
DIR/cells/<setting>/seed<k>/runs/<run>/ (its input stages are symlinks to the cell's).
Completed stages are skipped through their fingerprints, and an interrupted train stage
resumes from its last epoch, so SIGKILL anywhere and rerun the same command: it goes on
where it stopped. A run whose training diverges (modeling.TrainingDiverged) is recorded
in FAILED.json beside it, reported as failed and not retried; any other error stops
the study with its message (a bad config or input is not a result). After every run
the results so far are aggregated into DIR/study/ (pipeline.study.report): study.json,
study.md, PNG plots and the commit of the code. lambda is selected on the validation
split (never the test set): pipeline.study.stats.SELECTION_RULE. The job order is in
pipeline.study.config.
"""

from __future__ import annotations

import gc
import logging as py_logging
import os
import sys
import time

from absl import app, flags, logging
from ml_collections import config_flags

from pipeline import cli
from pipeline.core import provenance, stage, workdir_lock
from pipeline.run import STAGE_RUNS
from pipeline.study import config as study_config
from pipeline.study import records, report
from pipeline.study.config import Job
from pipeline.training import modeling

# The stages a cell holds, shared by its runs: every stage train reads.
CELL_STAGES = stage.upstream("train")
FAILED = "FAILED.json"
MORE_TO_DO = 75  # exit status when --max_jobs stopped the study with runs left
POLL_SECONDS = 30.0  # how often a process whose runs are all held by others looks again
REPO_ROOT = provenance.REPO_ROOT


def cell_dir(workdir: str, job: Job) -> str:
    return os.path.join(workdir, "cells", job.setting, f"seed{job.seed}")


def run_dir(workdir: str, job: Job, run_name: str) -> str:
    return os.path.join(cell_dir(workdir, job), "runs", run_name)


class Study:
    """A study config bound to a workdir: its jobs, their state, and running them."""

    def __init__(self, config, workdir: str, root: str = REPO_ROOT):
        study_config.validate(config, root)
        self.config = config
        self.workdir = workdir
        self.root = root
        self._fingerprints: dict = {}

    def job_config(self, job: Job):
        return study_config.pipeline_config(self.config, job, self.root)

    def run_name(self, job: Job) -> str:
        return job.run_name(self.config.methods[job.method].regularizer)

    def paths(self, job: Job) -> tuple[str, str]:
        """(cell dir, run dir) of a job whose lambda is known."""
        return cell_dir(self.workdir, job), run_dir(self.workdir, job, self.run_name(job))

    def fingerprints(self, job: Job) -> dict:
        if job not in self._fingerprints:
            self._fingerprints[job] = stage.fingerprints(self.job_config(job))
        return self._fingerprints[job]

    def run_key(self, job: Job) -> str:
        """A run's name in the study: "<setting>/seed<k>/<run name>"."""
        return f"{job.setting}/seed{job.seed}/{self.run_name(job)}"

    def record(self, job: Job) -> dict | None:
        """The job's run record (pipeline.study.records; None while it has not finished
        or its lambda is pending). A run finished in this workdir without a record
        (code before records) gets one written now."""
        if job.lam is None:
            return None
        key, fp = self.run_key(job), self.fingerprints(job)["train"]
        record = records.read(self.workdir, key, fp)
        if record is not None:
            return record
        cdir, rdir = self.paths(job)
        failed = os.path.join(rdir, FAILED)
        if stage.state(rdir, "train", fp) == "current":
            record = records.done_record(fp, cdir, rdir, self.run_name(job))
        elif os.path.isfile(failed) and stage.read_json(failed).get("fingerprint") == fp:
            record = records.failed_record(fp, stage.read_json(failed)["error"])
        else:
            return None
        records.write(self.workdir, key, record)
        return record

    def status(self, job: Job) -> str:
        """ "pending" (lambda not selected yet), "done", "failed" or "todo"."""
        if job.lam is None:
            return "pending"
        record = self.record(job)
        return "todo" if record is None else record["state"]

    def selections(self) -> dict:
        """Per grid method: its selection (study_report.selections: the validation
        table, the selected lambda, the grid so far)."""
        return report.selections(self)

    def selection(self) -> dict:
        """method -> selected lambda (None while pending), from validation metrics."""
        return {name: sel["selected"] for name, sel in self.selections().items()}

    def plan(self) -> list[Job]:
        """The jobs to run, in order (study_report.planned: a cut's unfinished left out)."""
        return report.planned(self, self.selections())[0]

    def grid_jobs(self) -> list[Job]:
        return report.grid_jobs(self, self.selections())

    def run_job(self, job: Job, on_start=None) -> bool:
        """Every missing or stale stage of one job: the cell's, then its train stage.

        The run directory's lock (pipeline.core.workdir_lock) is held throughout, and the
        cell directory's while its stages run, so two study processes never train
        the same run or the same cell stage: the second gets WorkdirInUse at once.
        on_start() is called once both locks are held and the run still needs
        training (so a "running" line means this process trains it). Returns False
        if the run had finished meanwhile (another process).
        """
        config = self.job_config(job)
        cdir, rdir = self.paths(job)
        fps = stage.fingerprints(config)
        needed = [s for s in stage.needed_stages(config) if s in CELL_STAGES]
        with workdir_lock.held(rdir):
            if self.record(job) is not None:
                return False
            with workdir_lock.held(cdir):
                if on_start is not None:  # both locks held: this process trains it
                    on_start()
                for name in needed:
                    _ensure(config, cdir, name, fps[name])
            for name in needed:
                _link(os.path.join("..", "..", name), os.path.join(rdir, name))
            try:
                _ensure(config, rdir, "train", fps["train"])
            except modeling.TrainingDiverged as e:  # any other error stops the study
                stage.write_json(
                    os.path.join(rdir, FAILED), {"fingerprint": fps["train"], "error": str(e)}
                )
                print(f"   run failed (recorded, not retried): {e}", flush=True)
        import keras  # deferred: TensorFlow

        keras.backend.clear_session()
        gc.collect()
        return True


def _link(target: str, path: str) -> None:
    if os.path.islink(path) and os.readlink(path) == target:
        return
    if os.path.lexists(path):
        os.remove(path)
    os.symlink(target, path)


def _ensure(config, workdir: str, name: str, fingerprint: str) -> None:
    """Runs stage `name` in workdir unless it is complete and current (stage.ensure):
    a stale one is rerun, an interrupted one resumes."""
    stage.ensure(workdir, name, fingerprint, lambda: STAGE_RUNS[name](config, workdir))


def _aggregate(study) -> None:
    """Writes <workdir>/study/; a failure there is reported but never stops training
    (rerun with --aggregate_only once it is fixed)."""
    try:
        report.write(study)
    except Exception as e:  # noqa: BLE001 - the runs matter more than the report
        logging.exception("aggregation failed")
        print(f"   aggregation failed ({type(e).__name__}: {e}); training goes on", flush=True)


def _hms(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s"


def run_study(
    config,
    workdir: str,
    *,
    max_jobs: int = 0,
    settings=(),
    root: str = REPO_ROOT,
    poll_seconds: float = POLL_SECONDS,
) -> bool:
    """Runs every job not yet done, in plan order; returns whether the study is complete
    (with `settings`: whether the jobs of those settings are).

    Aggregates into <workdir>/study/ after each run and at the end. Several processes
    may run one study side by side: each run and each cell holds a lock while it
    trains (Study.run_job), a process skips the runs another holds, and waits
    (polling every poll_seconds) when every run left is held or waits on a lambda
    that a held grid run will select. Their aggregations take turns
    (study_report.write).
    """
    study = Study(config, workdir, root)
    settings = check_settings(config, settings)
    os.makedirs(workdir, exist_ok=True)
    stale = stale_records(study, study.plan())
    if stale:
        print(
            f"== note: {len(stale)} run record(s) of another fingerprint (another config "
            f"or code version) are ignored and those runs train again, e.g. {stale[0]}",
            flush=True,
        )
    started, ran, waiting = time.time(), 0, False
    while True:
        jobs = [j for j in study.plan() if not settings or j.setting in settings]
        todo = [j for j in jobs if study.status(j) in ("todo", "pending")]
        if not todo:
            break
        if max_jobs and ran >= max_jobs:
            _aggregate(study)
            print(f"== stopped after {ran} runs (--max_jobs); {len(todo)} left", flush=True)
            return False
        outcome = _run_next(study, jobs, todo, started)
        if outcome == "ran":
            ran, waiting = ran + 1, False
            _aggregate(study)
        elif outcome == "held":
            if not waiting:
                print("== every run left is held by another process; waiting", flush=True)
            waiting = True
            time.sleep(poll_seconds)
        elif outcome == "pending":
            job = todo[0]
            if settings and config.selection_setting not in settings:
                raise stage.PipelineError(
                    f"{job.method}: its lambda is not selected yet; it is selected in "
                    f"setting {config.selection_setting!r}, which --settings leaves out: "
                    "run that setting first"
                )
            raise stage.PipelineError(
                f"{job.method}: its lambda is not selected although every grid run before "
                "it has finished; see study.md's selection table"
            )
    report.write(study)
    which = f"settings {', '.join(settings)}" if settings else "study"
    print(f"== {which} complete: {os.path.join(workdir, 'study')}", flush=True)
    return True


def stale_records(study, jobs) -> list[str]:
    """The run keys of `jobs` (lambda known) whose record was left by another config or
    code version: ignored, so a changed library version or base config that was not
    meant to change the runs shows here instead of as a study that starts over."""
    return [
        study.run_key(j)
        for j in jobs
        if j.lam is not None
        and records.is_stale(study.workdir, study.run_key(j), study.fingerprints(j)["train"])
    ]


def _run_next(study, jobs, todo, started) -> str:
    """Trains the first todo job no other process holds: "ran"; "again" when one had
    just been finished by another process; "held" when every runnable job is held, or
    none is and a held grid run will select a pending lambda; else "pending"."""
    runnable = [j for j in todo if j.lam is not None]
    held = False
    for job in runnable:
        t0 = time.time()
        position = f"[{len(jobs) - len(todo) + 1}/{len(jobs)}] {job.setting} seed {job.seed}"

        def announce(job=job, position=position):
            print(f"== {position} {study.run_name(job)}: running", flush=True)

        try:
            trained = study.run_job(job, on_start=announce)
        except workdir_lock.WorkdirInUse:
            held = True  # another process trains this run or its cell's stages
            continue
        if not trained:
            return "again"  # another process finished it meanwhile: look at the plan again
        rest = report.estimate_remaining(study, [j for j in todo if j != job])
        print(
            f"== {position} {study.run_name(job)}: finished in {_hms(time.time() - t0)}; "
            f"elapsed {_hms(time.time() - started)}; estimated for the rest {_hms(rest)} "
            "of run time (summed; processes side by side share it)",
            flush=True,
        )
        return "ran"
    if held or any(_is_held(study, j) for j in study.grid_jobs() if study.status(j) == "todo"):
        return "held"
    return "pending"


def _is_held(study, job: Job) -> bool:
    """Whether another process holds the job's run lock (it trains it now)."""
    rdir = study.paths(job)[1]
    if not os.path.isdir(rdir):
        return False
    try:
        with workdir_lock.held(rdir):
            return False
    except workdir_lock.WorkdirInUse:
        return True


def check_settings(config, settings) -> tuple[str, ...]:
    """`--settings` as a tuple of setting names of the study (empty: every setting)."""
    settings = tuple(s for s in settings if s)
    unknown = [s for s in settings if s not in config.settings]
    if unknown:
        raise stage.PipelineError(
            f"--settings: {', '.join(map(repr, unknown))} is not a setting of this study "
            f"(its settings: {', '.join(config.settings)})"
        )
    return settings


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    FLAGS = flags.FLAGS
    py_logging.getLogger("apache_beam").setLevel(py_logging.WARNING)
    logging.set_verbosity(logging.WARNING)
    try:
        if FLAGS.aggregate_only:
            report.write(Study(FLAGS.config, FLAGS.workdir))
            print(f"== aggregated: {os.path.join(FLAGS.workdir, 'study')}")
            return
        complete = run_study(
            FLAGS.config, FLAGS.workdir, max_jobs=FLAGS.max_jobs, settings=FLAGS.settings
        )
    except stage.PipelineError as e:
        cli.fail(e, "study: ", verbose=False)
    if not complete:
        sys.exit(MORE_TO_DO)


if __name__ == "__main__":
    config_flags.DEFINE_config_file(
        "config", None, "Study config: configs/studies/<name>.py[:variant].", lock_config=True
    )
    flags.DEFINE_string("workdir", None, "The study's directory (outputs in <workdir>/study/).")
    flags.DEFINE_integer("max_jobs", 0, f"Stop after this many runs (0 = all); exit {MORE_TO_DO}.")
    flags.DEFINE_bool("aggregate_only", False, "Only aggregate what has finished so far.")
    flags.DEFINE_list(
        "settings",
        [],
        "Run only these settings' jobs (comma-separated; default every setting), e.g. "
        "a second process beside one that runs the others.",
    )
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main, flags_parser=cli.parse_flags)
