"""The valid range of every numeric config field, checked before the first stage.

Without these checks a bad value is found late or not at all: `train.epochs=0` marks
train complete with untrained models, `train.batch_size=0` ends in a
ZeroDivisionError after the upstream stages ran. `check(config)` runs inside
`pipeline.config_check.check_config`, so both `pipeline.run` and every stage run as a
program refuse the value before anything is written, naming the field.

Each row: dotted field (`*` matches every key of a section, e.g. every run), the
range as text, and the test. A field a config lacks is skipped. A tuple-valued
field is checked element by element. NaN fails every range (each test is written
as `lo <= v`, which NaN never satisfies), and so does infinity. INTEGERS must be
integers (`epochs=1e20` is a float). Counts that size the work have an upper bound
too (UPPER): past it a typo writes 200,006 shard files or builds a network that
never finishes its first step, rather than failing. Last, `check` refuses a
learning-rate drop at or after the last epoch, which would never happen.
"""

from __future__ import annotations

import math
from typing import Any

from pipeline.core.stage import PipelineError


def _at_least(lo):
    return f">= {lo}", lambda v: v >= lo


def _above(lo):
    return f"> {lo}", lambda v: v > lo


def _closed(lo, hi):
    return f"in [{lo}, {hi}]", lambda v: lo <= v <= hi


def _half_open(lo, hi):
    return f"in [{lo}, {hi})", lambda v: lo <= v < hi


def _open(lo, hi):
    return f"in ({lo}, {hi})", lambda v: lo < v < hi


def _left_open(lo, hi):
    return f"in ({lo}, {hi}]", lambda v: lo < v <= hi


# Far above any run this project makes (the paper's schedules are 120-200 epochs,
# ResNet-1202 has 200 blocks per stage), far below what would hang or fill a disk.
MAX_EPOCHS = 10_000
MAX_SHARDS = 1024
MAX_BLOCKS_PER_STAGE = 200

_OPTIMIZER = {
    "epochs": _closed(1, MAX_EPOCHS),
    "batch_size": _at_least(1),
    "learning_rate": _above(0),
    "momentum": _half_open(0, 1),
    "weight_decay": _at_least(0),
    "lr_drop_epochs": _at_least(1),
    "lr_drop_factor": _left_open(0, 1),
    "shuffle_buffer": _at_least(1),
}

RANGES: dict[str, tuple[str, Any]] = {
    "seed": _at_least(0),
    "data.num_classes": _at_least(2),
    "data.image_shape": _at_least(1),
    "data.limit_train": _at_least(0),
    "data.limit_test": _at_least(0),
    "data.num_shards": _closed(1, MAX_SHARDS),
    "data.chunk_size": _at_least(1),
    "data.std": _above(0),
    "data.noise.flip_prob": _closed(0, 1),
    "data.noise.rate": _closed(0, 1),
    "data.noise.rates": _closed(0, 1),
    "data.noise.matrix": _closed(0, 1),
    "data.imbalance.ratio": _at_least(1),
    "data.imbalance.counts": _at_least(0),
    "data.csv.test_fraction": _open(0, 1),
    "data.text.max_tokens": _at_least(3),  # padding and OOV ids, and one token
    "data.text.sequence_length": _at_least(1),
    "data.image_list.max_classes": _at_least(0),
    "model.blocks_per_stage": _closed(1, MAX_BLOCKS_PER_STAGE),
    "model.widths": _at_least(1),
    "model.stem_strides": _at_least(1),
    **{f"pretrain.{k}": r for k, r in _OPTIMIZER.items()},
    **{f"train.{k}": r for k, r in _OPTIMIZER.items()},
    "train.drw_start_epoch": _at_least(0),
    "train.drw_beta": _half_open(0, 1),
    "train.runs.*.lam": _at_least(0),
    "train.runs.*.reg_every": _at_least(1),
    "tau.uncertainty_exponent": _at_least(0),
    "tau.density_exponent": _at_least(0),
    "tau.error_floor": _closed(0, 1),
    "eval.batch_size": _at_least(1),
    "export.version": _at_least(1),
}

# Fields that count something: a float there (1e20, 2.5) is refused as such.
INTEGERS = {
    "seed",
    "data.num_classes",
    "data.image_shape",
    "data.limit_train",
    "data.limit_test",
    "data.num_shards",
    "data.chunk_size",
    "data.text.max_tokens",
    "data.text.sequence_length",
    "data.image_list.max_classes",
    "model.blocks_per_stage",
    "model.widths",
    "model.stem_strides",
    *(f"{s}.{k}" for s in ("pretrain", "train") for k in ("epochs", "batch_size")),
    *(f"{s}.shuffle_buffer" for s in ("pretrain", "train")),
    "train.drw_start_epoch",
    "train.runs.*.reg_every",
    "eval.batch_size",
    "export.version",
}


def _values(config, parts: list[str], prefix: str):
    """(dotted name, value) of every field `parts` matches under `config`."""
    if not parts:
        yield prefix, config
        return
    head, rest = parts[0], parts[1:]
    if not hasattr(config, "keys"):
        return
    keys = list(config.keys()) if head == "*" else [head]
    for key in keys:
        if key in config:
            yield from _values(config[key], rest, f"{prefix}.{key}" if prefix else key)


def _flat(value) -> list:
    if isinstance(value, (list, tuple)):
        return [x for v in value for x in _flat(v)]
    return [value]


def _refuse(name: str, what: str, shown) -> PipelineError:
    return PipelineError(
        f"config.{name} must be {what}, got {shown!r}; fix it in the config file or with "
        f"--config.{name}=..."
    )


def check(config) -> None:
    """Raises PipelineError naming the first field outside its range."""
    for field, (text, ok) in RANGES.items():
        for name, value in _values(config, field.split("."), ""):
            shown_all = value if isinstance(value, (list, tuple)) else None
            for v in _flat(value):
                shown = v if shown_all is None else shown_all
                if isinstance(v, bool) or not isinstance(v, (int, float)):
                    raise _refuse(name, text, shown)
                if field in INTEGERS and not isinstance(v, int):
                    raise _refuse(name, f"an integer {text}", shown)
                if math.isinf(v):
                    raise _refuse(name, f"finite and {text}", shown)
                if not ok(v):
                    raise _refuse(name, text, shown)
    for section in ("pretrain", "train"):
        _check_lr_drops(config, section)


def _check_lr_drops(config, section: str) -> None:
    """Every lr_drop_epochs entry before the section's last epoch: a drop scheduled
    after `epochs` epochs never happens, so the schedule would silently not be the
    one the config describes."""
    if section not in config or "lr_drop_epochs" not in config[section]:
        return
    epochs, drops = config[section].get("epochs"), tuple(config[section].lr_drop_epochs)
    late = [e for e in drops if e >= epochs]
    if late:
        raise _refuse(
            f"{section}.lr_drop_epochs",
            f"before config.{section}.epochs={epochs} (a drop after the last epoch never "
            f"happens; {late} would not)",
            drops,
        )
