"""The valid range of every numeric config field, checked before the first stage.

Without these checks a bad value is found late or not at all: `train.epochs=0` marks
train complete with untrained models, `train.batch_size=0` ends in a
ZeroDivisionError after the upstream stages ran. `check(config)` runs inside
`pipeline.run.check_config`, so both `pipeline.run` and every stage run as a
program refuse the value before anything is written, naming the field.

Each row: dotted field (`*` matches every key of a section, e.g. every run), the
range as text, and the test. A field a config lacks is skipped. A tuple-valued
field is checked element by element. NaN fails every range (each test is written
as `lo <= v`, which NaN never satisfies).
"""

from __future__ import annotations

from typing import Any

from pipeline.stage import PipelineError


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


_OPTIMIZER = {
    "epochs": _at_least(1),
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
    "data.num_shards": _at_least(1),
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
    "model.blocks_per_stage": _at_least(1),
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


def check(config) -> None:
    """Raises PipelineError naming the first field outside its range."""
    for field, (text, ok) in RANGES.items():
        for name, value in _values(config, field.split("."), ""):
            for v in _flat(value):
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not ok(v):
                    shown = value if isinstance(value, (list, tuple)) else v
                    raise PipelineError(
                        f"config.{name} must be {text}, got {shown!r}; fix it in the "
                        f"config file or with --config.{name}=..."
                    )
