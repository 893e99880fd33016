"""Flags shared by every stage's `main` (defined only when a stage runs as a program).

Stage modules define flags inside `if __name__ == "__main__":`, so importing several
stages (as `pipeline.run` does) never defines a flag twice.
"""

import contextlib
import os
import re
import shlex
import sys
from collections.abc import Iterator

from absl import app, flags
from ml_collections import config_flags

from pipeline import config_check
from pipeline.core import stage, workdir_lock
from pipeline.training import multi_worker


def define_common_flags() -> None:
    config_flags.DEFINE_config_file(
        "config",
        None,
        "Experiment config file, optionally with a variant: configs/x.py:smoke. Any "
        "field can be overridden: --config.train.epochs=3 (misspelled fields fail).",
        lock_config=True,
    )
    flags.DEFINE_string("workdir", None, "Directory that holds every stage's output.")
    flags.DEFINE_bool(
        "force",
        False,
        "Rerun even if complete. A stage run as a program refuses a complete but stale "
        "output (made with another config) unless given --force; pipeline.run reruns "
        "stale stages itself, and with --force reruns every stage.",
    )
    flags.DEFINE_bool("quiet", False, "No Keras progress bars while training (fit verbose=0).")
    flags.DEFINE_bool(
        "verbose",
        False,
        "Show the traceback of an expected error (a bad config value, a busy or "
        "unwritable workdir, a missing stage output); without it, one line.",
    )
    flags.mark_flags_as_required(["config", "workdir"])


# How each stage option (stage.Stage.options) is given on the command line: its
# flag's define function, default and help, and how the flag's value becomes the
# argument of the stage's `run`.
OPTION_FLAGS = {
    "beam_args": (
        flags.DEFINE_string,
        "",
        "Extra Beam pipeline options for preprocess, e.g. '--direct_num_workers=2'.",
        shlex.split,
    ),
    "force_push": (
        flags.DEFINE_bool,
        False,
        "Push even if the model is not blessed or not infra-blessed (the reasons are "
        "recorded); reruns the push stage.",
        bool,
    ),
}


def _options(names) -> list[str]:
    return list(dict.fromkeys(o for n in names for o in stage.BY_NAME[n].options))


def define_option_flags(names) -> None:
    """Defines the flags of the options of stages `names` (each once)."""
    for option in _options(names):
        define, default, help_text, _ = OPTION_FLAGS[option]
        define(option, default, help_text)


def option_values(names) -> dict:
    """The parsed option flags of stages `names`, as their `run` takes them."""
    return {o: OPTION_FLAGS[o][3](flags.FLAGS[o].value) for o in _options(names)}


def config_from_flags():
    """The parsed --config, with --quiet applied: every section's `verbose` set to 0.

    The flags are read here, once; `verbose` is no part of any fingerprint, so
    --quiet never makes a stage stale.
    """
    config = flags.FLAGS.config
    try:
        config.keys()  # config_flags defers a load error to the first access
    except OSError as e:
        raise stage.PipelineError(_load_error(flags.FLAGS["config"].config_filename, e)) from e
    if flags.FLAGS.quiet:
        for section in config.values():
            if hasattr(section, "keys") and "verbose" in section:
                section.verbose = 0
    return config


def _load_error(path: str, error: Exception) -> str:
    """One line for a config file that does not load (config_flags' is several)."""
    path = path.split(":")[0]  # without the variant
    if not os.path.isfile(path):
        return (
            f"config file {path!r} does not exist; pass an existing file as "
            "--config=path/to/config.py[:variant]"
        )
    cause = error.__cause__ or error
    last = [line.strip() for line in str(cause).splitlines() if line.strip()]
    return f"config file {path!r} does not load: {last[-1] if last else cause!r}; fix it"


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with a bad flag as one line on stderr and exit status 1.

    absl reports an error inside a config file (an unknown variant) as "FATAL Flags
    parsing error" with the config module's traceback, whose last line is the
    problem; a misspelled override (--config.train.epoch=3) escapes as an
    AttributeError with several tracebacks. `--verbose` keeps those reports. Every
    program of the pipeline passes this to `app.run(..., flags_parser=...)`.
    """
    try:
        return flags.FLAGS(argv)
    except (flags.Error, AttributeError, KeyError) as e:
        if "--verbose" in argv:
            raise
        if isinstance(e, flags.Error):
            lines = [line.strip() for line in str(e).splitlines() if line.strip()]
            message = lines[-1] if lines else str(e)
        else:
            message = _unknown_field(argv, str(e))
        print(f"error: {message}", file=sys.stderr)
        sys.exit(1)


def _unknown_field(argv: list[str], error: str) -> str:
    """One line for ml_collections' error on an override of a field that does not
    exist, naming the flag as given and ml_collections' suggestion if any."""
    field = re.search(r"'(\w+)", error)
    name = field.group(1) if field else "?"
    given = [a for a in argv if re.match(rf"--config\.(\w+\.)*{re.escape(name)}(\.|=|$)", a)]
    message = f"{given[0] if given else '--config'}: the config has no field {name!r}"
    suggestion = re.search(r'Did you mean "(\w+)"', error)
    return message + (f' (did you mean "{suggestion.group(1)}"?)' if suggestion else "")


def fail(error: stage.PipelineError, prefix: str = "", *, verbose: bool | None = None) -> None:
    """Ends a main on an expected error: one line on stderr and exit status 1, or
    the traceback with `verbose` (default: the --verbose flag)."""
    if flags.FLAGS.verbose if verbose is None else verbose:
        raise error
    print(f"error: {prefix}{error}", file=sys.stderr)
    sys.exit(1)


def run_main(name: str, run_fn) -> None:
    """A stage main's body after parsing: check the whole config, then run (or skip)
    the stage with --config, --workdir and --force."""
    try:
        config = config_from_flags()
    except stage.PipelineError as e:
        fail(e, f"{name}: ")
    options = option_values([name])
    # A forcing option (push's --force_push: a refused push is complete) reruns the
    # stage as --force does.
    forcing = stage.BY_NAME[name].forcing_option
    run_stage_main(
        name,
        lambda config, workdir: run_fn(config, workdir, **options),
        config,
        flags.FLAGS.workdir,
        force=flags.FLAGS.force or bool(forcing and options[forcing]),
        check=config_check.check_config,
        verbose=flags.FLAGS.verbose,
    )


def run_stage_main(
    name: str, run_fn, config, workdir: str, *, force: bool = False, check=None, verbose=False
) -> None:
    """Shared body of every stage's `main`.

    A stage that is complete and current is skipped. One that is complete but stale
    (its config or an input changed) is refused with an error, since rerunning it
    alone would leave later stages inconsistent: use `python -m pipeline.run`, which
    reruns it and everything downstream, or pass --force to rerun just this stage.
    An input stage that is stale is refused too. Errors print without a traceback
    (`fail`). The workdir's lock (pipeline.core.workdir_lock) is held throughout: a
    second process in the same workdir is refused before anything is touched.
    `force` is the stage main's --force; `check(config)`, if given, runs first
    (`config_check.check_config`: the whole config, before anything runs).
    `verbose` (--verbose): an error raises with its traceback instead.
    A multi-worker training stage (pipeline.training.multi_worker) starts its strategy first;
    its chief does all of the above, the other workers only check and run (they
    write nothing, and take no lock: the chief holds it).
    """
    try:
        if check is not None:
            check(config)
        # A stage with inputs refuses a workdir that does not exist before taking
        # the lock, which would create it: a mistyped --workdir leaves nothing
        # behind. (In an existing workdir the lock comes first: another process
        # may be making the inputs.)
        if not os.path.isdir(workdir):
            for dep in stage.inputs(config, name)[:1]:
                stage.require(workdir, dep)  # raises, naming the stage to run first
        section = config.get(name) if hasattr(config, "get") else None
        worker = multi_worker.worker(section)
        lock = workdir_lock.held if worker is None or worker.chief else _no_lock
        with lock(workdir):
            _run_if_needed(name, run_fn, config, workdir, force=force, worker=worker)
    except stage.PipelineError as e:
        fail(e, f"{name}: ", verbose=verbose)


def _run_if_needed(name: str, run_fn, config, workdir: str, *, force: bool, worker) -> None:
    """Runs stage `name` unless it is current; refuses stale or incomplete inputs and,
    without `force`, a stale output. Called with the workdir's lock held."""
    fps = stage.fingerprints(config)
    for dep in stage.inputs(config, name):
        state = stage.state(workdir, dep, fps[dep])
        if state == "incomplete":
            raise stage.incomplete_error(workdir, dep, stage.why_incomplete(workdir, dep))
        if state == "stale":
            raise stage.PipelineError(
                f"input stage '{dep}' in {workdir!r} is stale (made with another "
                "config); rerun it first, or run `python -m pipeline.run`"
            )
    stage.ensure(
        workdir,
        name,
        fps[name],
        lambda: run_fn(config, workdir),
        force=force,
        fresh=force,
        refuse_stale=True,
        writer=worker is None or worker.chief,
    )


@contextlib.contextmanager
def _no_lock(workdir: str) -> Iterator[None]:
    """What a multi-worker stage's other workers hold: nothing (the chief holds the lock)."""
    del workdir
    yield


def run_stage(name: str, run_fn) -> None:
    """The whole `__main__` of a stage: define flags (the common ones and its
    options'), parse them, run (or skip)."""
    define_common_flags()
    define_option_flags([name])

    def main(argv):
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {argv[1:]}")
        run_main(name, run_fn)

    app.run(main, flags_parser=parse_flags)
