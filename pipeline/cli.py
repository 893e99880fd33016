"""Flags shared by every stage's `main` (defined only when a stage runs as a program).

Stage modules define flags inside `if __name__ == "__main__":`, so importing several
stages (as `pipeline.run` does) never defines a flag twice.
"""

import os
import re
import sys

from absl import app, flags
from ml_collections import config_flags

from pipeline import stage


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


def fail(error: stage.PipelineError, prefix: str = "") -> None:
    """Ends a main on an expected error: one line on stderr and exit status 1, or
    the traceback under --verbose."""
    if flags.FLAGS.verbose:
        raise error
    print(f"error: {prefix}{error}", file=sys.stderr)
    sys.exit(1)


def run_main(name: str, run_fn) -> None:
    """A stage main's body after parsing: check the whole config, then run (or skip)
    the stage with --config, --workdir and --force."""
    from pipeline import run  # deferred: it imports every stage

    try:
        stage.run_main(
            name,
            run_fn,
            config_from_flags(),
            flags.FLAGS.workdir,
            force=flags.FLAGS.force,
            check=run.check_config,
            verbose=flags.FLAGS.verbose,
        )
    except stage.PipelineError as e:
        fail(e, f"{name}: ")


def run_stage(name: str, run_fn) -> None:
    """The whole `__main__` of a stage: define flags, parse them, run (or skip)."""
    define_common_flags()

    def main(argv):
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {argv[1:]}")
        run_main(name, run_fn)

    app.run(main, flags_parser=parse_flags)
