"""Per-group regularization strength tau = I^a / q^b (paper eq. 5 and 7).

Plain NumPy over arrays, one entry per group (per class label by default).
"""

from __future__ import annotations

import numpy as np

from har_tf import checks


def per_class_error(labels, predictions, num_classes: int):
    """Error of predictions against (noisy) labels, per class of the label.

    Args:
      labels: int [N] labels in [0, num_classes), the ones the model is judged on.
      predictions: int [N] predicted class ids.
      num_classes: C.

    Returns:
      (errors, support): float64 [C] error rates (NaN where a class has no example)
      and int64 [C] number of examples per class.
    """
    labels = np.asarray(labels, dtype=np.int64)
    predictions = np.asarray(predictions, dtype=np.int64)
    if labels.shape != predictions.shape or labels.ndim != 1:
        raise ValueError(
            f"labels and predictions must be 1-D of equal length, got {labels.shape} "
            f"and {predictions.shape}"
        )
    checks.check_labels(labels, num_classes)
    support = np.bincount(labels, minlength=num_classes)
    wrong = np.bincount(labels, weights=(labels != predictions), minlength=num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        errors = np.where(support > 0, wrong / np.maximum(support, 1), np.nan)
    return errors, support


def estimate_tau(
    errors,
    counts,
    *,
    uncertainty_exponent: float = 0.6,
    density_exponent: float = 0.4,
    error_floor: float = 0.0,
    normalize: bool = True,
):
    """tau_c = max(err_c, floor)^a / n_c^b, optionally divided by its maximum.

    Args:
      errors: float [C] validation error per group (the uncertainty estimate I).
      counts: [C] training examples per group (the density q, up to a constant).
      uncertainty_exponent: a (paper: 3/5).
      density_exponent: b (paper: 2/5).
      error_floor: lower bound on the error. The authors' code uses 0, so a group
        with zero validation error gets tau = 0 (no regularization at all).
      normalize: divide by max(tau) as the authors do, so the largest tau is 1.

    Returns:
      float64 [C] tau.

    Raises:
      ValueError: a NaN error (a group with no held-out example), a count < 1, an
        error outside [0, 1], mismatched shapes, or (with `normalize`) all-zero tau.
    """
    errors = np.asarray(errors, dtype=np.float64)
    counts = np.asarray(counts, dtype=np.float64)
    if errors.shape != counts.shape or errors.ndim != 1:
        raise ValueError(
            f"errors and counts must be 1-D of equal length, got {errors.shape} and {counts.shape}"
        )
    missing = np.flatnonzero(np.isnan(errors))
    if missing.size:
        raise ValueError(
            f"class {int(missing[0])} has no held-out example, so its uncertainty "
            "cannot be estimated (a larger held-out split or fewer classes is needed)"
        )
    bad = np.flatnonzero((errors < 0) | (errors > 1))
    if bad.size:
        raise ValueError(f"class {int(bad[0])}: error {errors[bad[0]]} is outside [0, 1]")
    empty = np.flatnonzero(counts < 1)
    if empty.size:
        raise ValueError(f"class {int(empty[0])} has no training example (count 0)")
    tau = np.maximum(errors, error_floor) ** uncertainty_exponent / counts**density_exponent
    if normalize:
        top = tau.max()
        if top <= 0:
            raise ValueError(
                "every class has zero validation error, so tau is 0 everywhere; set "
                "error_floor > 0 or use uniform regularization"
            )
        tau = tau / top
    return tau


def class_balanced_weights(counts, *, beta: float = 0.9999):
    """Class-balanced loss weights (Cui et al., 2019), as DRW uses them.

    w_c = (1 - beta) / (1 - beta^n_c), normalized so that sum_c w_c = C: the
    deferred re-weighting of the authors' HAR-DRW (and LDAM-DRW) code.

    Args:
      counts: [C] training examples per class, all >= 1.
      beta: in [0, 1); 0 gives uniform weights.

    Returns:
      float64 [C] weights.
    """
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 1 or np.any(counts < 1):
        raise ValueError(f"counts must be 1-D with every entry >= 1, got {counts.tolist()}")
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"beta must be in [0, 1), got {beta}")
    weights = (1.0 - beta) / (1.0 - np.power(beta, counts))
    return weights / weights.sum() * len(counts)
