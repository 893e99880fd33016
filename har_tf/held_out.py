"""Held-out predictions for tau: the two-halves split and the per-class error from it.

Algorithm 1 of the paper estimates each class's uncertainty from a model that did not
train on the examples it is judged on: an ERM model pretrained on half A of the
training set predicts half B. Cross-fitting also pretrains on half B and predicts half
A, so that every training example gets exactly one held-out prediction.

These functions are the one code path that both `har_tf.HARClassifier` and the
pipeline's `pretrain` / `estimate_tau` stages use. Plain NumPy, no I/O.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from har_tf import checks
from har_tf import tau as tau_lib


def softmax(logits) -> np.ndarray:
    """Class probabilities float64 [N, C] from logits [N, C] (rows sum to 1)."""
    z = np.asarray(logits, np.float64)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def split_halves(ids, labels, *, seed: int, stratified: bool = True):
    """Splits ids into two halves, per label when stratified.

    Args:
      ids: int [N] example ids; labels: int [N] (noisy) labels.
      seed: seeds the draw of each label group's half A.
      stratified: split each label group separately (else the whole set at once).

    Returns:
      (half_a, half_b): sorted int64 id arrays; within each label group half_a gets
      floor(n / 2) examples drawn with `seed`, half_b the rest. The draw depends only
      on the (id, label) pairs, not on their order.
    """
    ids = np.asarray(ids, dtype=np.int64)
    labels = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    groups = (
        [np.flatnonzero(labels == c) for c in np.unique(labels)]
        if stratified
        else [np.arange(len(ids))]
    )
    half_a = []
    for idx in groups:
        idx = idx[np.argsort(ids[idx], kind="stable")]  # independent of record order
        half_a.append(ids[rng.permutation(idx)[: len(idx) // 2]])
    a = np.sort(np.concatenate(half_a)) if half_a else np.zeros([0], np.int64)
    b = np.setdiff1d(ids, a)
    return a, b


def check_splittable(labels, num_classes: int) -> None:
    """Refuses labels with a class of 0 < n < 2 examples: it cannot be in both halves.

    A class with no example at all is left to `class_tau` (its count is 0).
    """
    counts = np.bincount(np.asarray(labels, np.int64), minlength=num_classes)
    few = np.flatnonzero((counts > 0) & (counts < 2))
    if few.size:
        c = int(few[0])
        raise ValueError(
            f"class {c} has {counts[c]} example; every class needs at least 2 so that "
            "it appears in both halves (one trains the ERM model, the other measures "
            "its error)"
        )


@dataclasses.dataclass(frozen=True)
class ClassTau:
    """Per-class results of Algorithm 1's uncertainty step, all [C] arrays.

    errors: held-out error against the given labels (the uncertainty I).
    held_out: held-out examples per class (the support of `errors`).
    counts: training examples per class (the density q, up to a constant).
    tau: err^a / n^b, divided by its maximum.
    """

    errors: np.ndarray
    held_out: np.ndarray
    counts: np.ndarray
    tau: np.ndarray


def class_tau(
    train_labels,
    held_out_labels,
    held_out_predictions,
    num_classes: int,
    *,
    uncertainty_exponent: float = 0.6,
    density_exponent: float = 0.4,
    error_floor: float = 0.0,
    train_weights=None,
    held_out_weights=None,
) -> ClassTau:
    """tau from held-out predictions: the estimate_tau step of Algorithm 1.

    With one split the held-out set is half B. With cross-fitting it is every
    training example (half B predicted by the model of half A, half A by that of half
    B), and the per-class error pools both directions: wrong predictions over held-out
    examples of the class, i.e. the two halves' errors weighted by their supports.

    Args:
      train_labels: int [N] given labels of the whole training set (for the counts).
      held_out_labels: int [M] given labels of the held-out examples.
      held_out_predictions: int [M] their predicted classes, from a model that did
        not train on them.
      num_classes: C.
      uncertainty_exponent, density_exponent, error_floor: as `har_tf.tau.estimate_tau`.
      train_weights, held_out_weights: optional float [N] and [M] example weights
        (a classifier's `sample_weight`). Each class's count becomes the sum of its
        examples' weights and its error the weighted share of wrong predictions,
        so that an integer weight counts as that many copies of the example.

    Returns:
      ClassTau (`counts` and `held_out` float64 with weights).

    Raises:
      ValueError: as `per_class_error` and `estimate_tau` (a class without a
        held-out or training example, all-zero error).
    """
    train_labels = checks.check_labels(train_labels, num_classes, name="train_labels")
    errors, support = tau_lib.per_class_error(held_out_labels, held_out_predictions, num_classes)
    counts = np.bincount(train_labels, minlength=num_classes)
    density = counts
    if train_weights is not None or held_out_weights is not None:
        errors, support, counts = _weighted(
            train_labels, train_weights, held_out_labels, held_out_predictions,
            held_out_weights, num_classes,
        )  # fmt: skip
        # tau is normalized, so scaling the counts leaves it unchanged; estimate_tau
        # wants counts >= 1, which weights below 1 would not give.
        density = counts / counts.min()
    tau = tau_lib.estimate_tau(
        errors,
        density,
        uncertainty_exponent=uncertainty_exponent,
        density_exponent=density_exponent,
        error_floor=error_floor,
    )
    return ClassTau(errors=errors, held_out=support, counts=counts, tau=tau)


def _weighted(train_labels, train_weights, labels, predictions, weights, num_classes):
    """(errors, support, counts) of `class_tau` with example weights; refuses a class
    whose weights sum to 0 (it would have no count or no held-out error)."""
    labels = np.asarray(labels, np.int64)
    if train_weights is None or weights is None:
        raise ValueError("pass both train_weights and held_out_weights, or neither")
    train_weights = np.asarray(train_weights, np.float64)
    weights = np.asarray(weights, np.float64)
    if train_weights.shape != train_labels.shape or weights.shape != labels.shape:
        raise ValueError("train_weights and held_out_weights need one weight per label")
    counts = np.bincount(train_labels, weights=train_weights, minlength=num_classes)
    support = np.bincount(labels, weights=weights, minlength=num_classes)
    wrong = np.bincount(
        labels, weights=weights * (labels != np.asarray(predictions)), minlength=num_classes
    )
    empty = np.flatnonzero((support <= 0) | (counts <= 0))
    if empty.size:
        c = int(empty[0])
        raise ValueError(
            f"class {c} has a total sample_weight of 0 among its held-out examples: "
            "HAR cannot measure its error to set its tau"
        )
    return wrong / support, support, counts
