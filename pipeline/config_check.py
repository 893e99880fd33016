"""The whole config checked before any stage runs (`check_config`).

`pipeline.run` and every stage run as a program (`cli.run_main`) call it first, so
a misnamed export.run, an out-of-range evaluation group or a threshold naming an
unknown baseline run fails now, not after training. The checks of the train,
evaluate and export sections live here rather than in those stage modules, so that
this module (and `cli`, which imports it) imports no stage: `python -m
pipeline.train` then loads train.py once, as `__main__`.
"""

from __future__ import annotations

import re

from pipeline.core import config_ranges
from pipeline.core.stage import PipelineError
from pipeline.evaluation import blessing
from pipeline.training import modeling, training_set

REGULARIZERS = ("none", "uniform", "har")


def check_config(config) -> None:
    """Checks every section; raises PipelineError naming the first problem.

    Numeric ranges first (config_ranges), then each section's own check;
    preprocess's needs the data, so it runs as that stage starts (first).
    """
    config_ranges.check(config)
    modeling.check_config(config)
    validate_runs(config.train.runs, cross_fit=bool(config.tau.get("cross_fit", False)))
    eval_groups(config)
    blessing.check_config(config)
    check_export(config)


def validate_runs(runs, *, cross_fit: bool = False) -> None:
    """config.train.runs: at least one run, each with a known regularizer, lam > 0
    unless it is "none", and a training set it can have
    (pipeline.training.training_set; `cross_fit`: config.tau.cross_fit, which a run dropping
    label issues needs); else PipelineError."""
    if not runs:
        raise PipelineError("config.train.runs is empty: nothing to train")
    for name, run_cfg in runs.items():
        if run_cfg.regularizer not in REGULARIZERS:
            raise PipelineError(
                f"run {name!r}: regularizer {run_cfg.regularizer!r} is not one of {REGULARIZERS}"
            )
        if run_cfg.regularizer != "none" and run_cfg.lam <= 0:
            raise PipelineError(f"run {name!r}: a {run_cfg.regularizer} run needs lam > 0")
        training_set.check_run(name, run_cfg, cross_fit=cross_fit)


def eval_groups(config) -> dict[str, tuple[int, ...]]:
    """config.eval.groups as class ids; PipelineError for a class outside [0, C)."""
    groups = {g: tuple(int(c) for c in classes) for g, classes in config.eval.groups.items()}
    num_classes = config.data.num_classes
    for g, classes in groups.items():
        bad = [c for c in classes if not 0 <= c < num_classes]
        if bad:
            raise PipelineError(f"eval group {g!r} names classes {bad} outside [0, {num_classes})")
    return groups


# A model name becomes a directory (<workdir>/export/<name>, the serving base path)
# and a URL segment (/v1/models/<name>:predict): letters, digits, '.', '_', '-',
# starting with a letter or digit, so it is never "", "..", a path or a ':' verb.
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def check_model_name(name) -> None:
    """PipelineError unless `name` is a valid config.export.model_name (MODEL_NAME)."""
    if not isinstance(name, str) or not MODEL_NAME.fullmatch(name):
        raise PipelineError(
            f"config.export.model_name must be 1-128 letters, digits, '.', '_' or '-', "
            f"starting with a letter or digit (it names a directory and a URL), got {name!r}"
        )


def check_export(config) -> None:
    """config.export names a configured run and a valid model name (else
    PipelineError); its version's range is config_ranges' (export.version)."""
    section = config.export
    check_model_name(section.model_name)
    runs = config.train.runs
    if section.run not in runs:
        raise PipelineError(
            f"export.run={section.run!r} names no run of config.train.runs; runs: {sorted(runs)}"
        )
