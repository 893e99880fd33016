"""The validation split: a seeded, stratified share of the (noisy) train split.

Model selection (the study runner's lambda choice, `pipeline.study`) must never look
at the test set. What a user has is the training data with its noisy labels, so the
validation split is carved from it: per noisy label, `round(n_c * fraction)` examples
drawn with a generator seeded by (config.seed, VALIDATION_STREAM), so it differs from
the pretrain halves' draw. `preprocess` records the ids in manifest.json
(`manifest["validation"]`); pretrain, estimate_tau and train then use only the other
train records (`data.read_fit_labels`), so a run never trains on, or estimates tau
from, the examples that select it. With `config.data.val_fraction = 0` (the default)
nothing is carved and the manifest holds no "validation" entry.
"""

from __future__ import annotations

import numpy as np

from pipeline.core import stage

# Second word of the validation draw's seed: its stream is apart from every other
# draw seeded by config.seed alone (the pretrain halves, weight initialization).
VALIDATION_STREAM = 1_000_003
RULE = (
    "per noisy label c: round(n_c * fraction) ids drawn without replacement by "
    "numpy.random.default_rng([seed, 1000003]).permutation over the class's ids "
    "in ascending order, classes in ascending order"
)


def split_validation(ids, labels, *, fraction: float, seed: int) -> np.ndarray:
    """The ids of the validation split (sorted int64), stratified by `labels`.

    Deterministic in (the set of (id, label) pairs, fraction, seed): the order the
    records come in does not matter.

    Args:
      ids: int [N] unique example ids of the train split.
      labels: int [N] their (noisy) training labels.
      fraction: share of each class to hold out, in [0, 1).
      seed: the experiment's seed.

    Raises:
      ValueError: fraction outside [0, 1), or ids and labels of different lengths.
    """
    if not 0.0 <= float(fraction) < 1.0:
        raise ValueError(f"config.data.val_fraction must be in [0, 1), got {fraction}")
    ids = np.asarray(ids, np.int64)
    labels = np.asarray(labels, np.int64)
    if ids.shape != labels.shape:
        raise ValueError(f"{len(ids)} ids but {len(labels)} labels")
    if fraction == 0 or len(ids) == 0:
        return np.zeros([0], np.int64)
    rng = np.random.default_rng([int(seed), VALIDATION_STREAM])
    held = []
    for c in np.unique(labels):
        members = np.sort(ids[labels == c])
        k = int(round(len(members) * float(fraction)))
        held.append(rng.permutation(members)[:k])
    return np.sort(np.concatenate(held))


def checked_fraction(data_config) -> float:
    """config.data.val_fraction (0 if the config has no such field), checked."""
    fraction = float(data_config.get("val_fraction", 0.0))
    if not 0.0 <= fraction < 1.0:
        raise stage.PipelineError(f"config.data.val_fraction must be in [0, 1), got {fraction}")
    return fraction


def manifest_entry(ids, labels, *, fraction: float, seed: int, num_classes: int) -> dict:
    """What manifest.json records under "validation": the ids, counts and the rule."""
    val = split_validation(ids, labels, fraction=fraction, seed=seed)
    labels = np.asarray(labels, np.int64)
    val_labels = labels[np.isin(np.asarray(ids, np.int64), val)]
    return {
        "fraction": float(fraction),
        "seed": int(seed),
        "rule": RULE,
        "num_examples": int(len(val)),
        "counts_noisy": np.bincount(val_labels, minlength=num_classes).tolist(),
        "num_fit_examples": int(len(labels) - len(val)),
        "ids": val.tolist(),
    }


def validation_ids(manifest: dict) -> np.ndarray:
    """The validation ids a manifest records (empty if it has no validation split)."""
    return np.asarray(manifest.get("validation", {}).get("ids", []), np.int64)
