"""What HARModel accepts from its callers, checked: its options, its per-class tables
(tau, class weights) and the extras a batch may carry (sample weights, per-example tau).

Plain NumPy and Python; each check raises a ValueError that names the bad value.
"""

from __future__ import annotations

import keras
import numpy as np

from har_tf import regularizer
from har_tf.objective import SCALES


def check_options(lam, aggregation, scale, weight_decay, epsilon, reg_every) -> None:
    """ValueError for an option HARModel cannot use, naming it."""
    if aggregation not in regularizer.AGGREGATIONS:
        raise ValueError(
            f"aggregation must be one of {regularizer.AGGREGATIONS}, got {aggregation!r}"
        )
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    if lam < 0 or weight_decay < 0:
        raise ValueError(f"lam and weight_decay must be >= 0, got {lam} and {weight_decay}")
    if not epsilon >= 0:  # also NaN: it sits under the norms' square roots
        raise ValueError(f"epsilon must be >= 0, got {epsilon}")
    if int(reg_every) != reg_every or reg_every < 1:
        raise ValueError(f"reg_every must be an integer >= 1, got {reg_every}")


def tau_table(tau, num_classes: int) -> np.ndarray:
    """`tau` as a float32 [C] array, refusing a wrong shape, NaN, inf or tau < 0."""
    tau = np.asarray(tau, dtype=np.float32)
    if tau.shape != (num_classes,):
        raise ValueError(f"tau must have {num_classes} entries, got shape {tau.shape}")
    bad = np.flatnonzero(~np.isfinite(tau) | (tau < 0))
    if bad.size:
        raise ValueError(
            f"tau must be finite and >= 0 (a negative tau rewards large gradients); "
            f"class {int(bad[0])} has {tau[bad[0]]}"
        )
    return tau


def class_weight_table(weights, num_classes: int) -> np.ndarray:
    """Per-class loss weights as a float32 [C] array (None: ones), refusing a wrong
    shape or a negative weight."""
    weights = np.ones(num_classes) if weights is None else np.asarray(weights)
    if weights.shape != (num_classes,) or np.any(weights < 0):
        raise ValueError(f"class weights must be {num_classes} non-negative values, got {weights}")
    return weights.astype(np.float32)


def unpack_batch(data):
    """(x, y, sample_weight, tau) of a batch `(x, y[, w or {"tau", "sample_weight"}])`.

    The third element is Keras's sample weight, or a dict that may also carry a
    per-example tau [B] (which then replaces the model's per-class table).
    """
    x, y, extra = keras.utils.unpack_x_y_sample_weight(data)
    tau = None
    sample_weight = extra
    if isinstance(extra, dict):
        unknown = set(extra) - {"tau", "sample_weight"}
        if unknown:
            raise ValueError(
                f"unknown keys {sorted(unknown)} in the batch's third element; "
                "expected 'tau' and/or 'sample_weight'"
            )
        tau = extra.get("tau")
        sample_weight = extra.get("sample_weight")
    return x, y, sample_weight, tau
