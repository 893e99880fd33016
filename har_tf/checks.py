"""Argument checks shared by the library and the pipeline: labels in range,
probabilities in [0, 1], counts, ids and class ids. Each raises a ValueError that
names the argument and the first bad value."""

from __future__ import annotations

import numpy as np


def out_of_range(labels, num_classes: int) -> np.ndarray:
    """Indices of the labels outside [0, num_classes), in order (int64 [k])."""
    labels = np.asarray(labels)
    return np.flatnonzero((labels < 0) | (labels >= num_classes))


def check_labels(labels, num_classes: int, *, name: str = "labels") -> np.ndarray:
    """Returns `labels` as int64 [N]; ValueError naming the first one outside [0, C)."""
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must be integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    bad = out_of_range(arr, num_classes)
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"{name}[{i}] = {int(arr[i])} is outside [0, {num_classes}) "
            f"({bad.size} label(s) out of range)"
        )
    return arr


def check_ids(ids, *, size: int | None = None, unique: bool = False) -> np.ndarray:
    arr = np.asarray(ids)
    if arr.ndim != 1:
        raise ValueError(f"ids must be 1-D, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"ids must be integers, got dtype {arr.dtype}")
    if size is not None and arr.size != size:
        raise ValueError(f"ids has {arr.size} entries, labels {size}")
    arr = arr.astype(np.int64)
    if arr.size and arr.min() < 0:
        i = int(np.flatnonzero(arr < 0)[0])
        raise ValueError(f"ids[{i}] = {int(arr[i])} is negative")
    if unique and np.unique(arr).size != arr.size:
        raise ValueError("ids must be unique")
    return arr


def check_counts(counts) -> np.ndarray:
    counts = np.asarray(counts)
    if counts.ndim != 1 or not np.issubdtype(counts.dtype, np.integer):
        raise ValueError(f"counts must be a 1-D integer array, got {counts.dtype} {counts.shape}")
    if np.any(counts < 0):
        raise ValueError(f"counts must be non-negative, got {counts.tolist()}")
    return counts.astype(np.int64)


def check_ratio(ratio) -> float:
    ratio = float(ratio)
    if not ratio >= 1.0:  # also rejects NaN
        raise ValueError(f"imbalance ratio must be >= 1, got {ratio}")
    return ratio


def check_probability(value, name: str) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:  # also rejects NaN
        raise ValueError(f"{name} must be in [0, 1], got {value}")
    return value


def check_num_classes(num_classes) -> int:
    if int(num_classes) != num_classes or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes}")
    return int(num_classes)


def check_class_id(c, num_classes: int, *, what: str) -> int:
    if int(c) != c or not 0 <= c < num_classes:
        raise ValueError(f"{what}: class {c} is outside [0, {num_classes})")
    return int(c)
