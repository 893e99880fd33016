"""Flags shared by every stage's `main` (defined only when a stage runs as a program).

Stage modules define flags inside `if __name__ == "__main__":`, so importing several
stages (as `pipeline.run` does) never defines a flag twice.
"""

from absl import flags
from ml_collections import config_flags


def define_common_flags() -> None:
    config_flags.DEFINE_config_file(
        "config",
        None,
        "Experiment config file, optionally with a variant: configs/x.py:smoke. Any "
        "field can be overridden: --config.train.epochs=3 (misspelled fields fail).",
        lock_config=True,
    )
    flags.DEFINE_string("workdir", None, "Directory that holds every stage's output.")
    flags.mark_flags_as_required(["config", "workdir"])
