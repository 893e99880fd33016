"""Label-noise transition matrices: T[clean, noisy] is the probability that an example
of class `clean` is given label `noisy`, shape (C, C), rows summing to 1.

`pair_swap_matrix`, `group_flip_matrix`, `uniform_noise_matrix`,
`asymmetric_noise_matrix`, any matrix checked by `validate_transition_matrix`, and
the paper's presets `cifar10_hetero_matrix` and `cifar100_superclass_matrix`.
`har_tf.corruption` applies them (and re-exports them).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from har_tf.checks import check_class_id, check_num_classes, check_probability

_ROW_SUM_TOL = 1e-6


def pair_swap_matrix(
    num_classes: int, pairs: Iterable[Sequence[int]], flip_prob: float
) -> np.ndarray:
    """Transition matrix where the classes of each pair swap labels.

    Each class of a pair keeps its label with probability `1 - flip_prob` and takes
    its partner's label with probability `flip_prob`; classes in no pair are clean.

    Args:
      num_classes: C.
      pairs: pairs `(a, b)` of distinct class ids; a class may appear in one pair only.
      flip_prob: the probability of moving to the partner, in [0, 1].

    Returns:
      float64 (C, C) matrix `T[clean, noisy]`.

    Raises:
      ValueError: on a class id out of range, a class in two pairs, a pair that is not
        two distinct classes, or a probability outside [0, 1].
    """
    num_classes = check_num_classes(num_classes)
    flip_prob = float(flip_prob)
    if not 0.0 <= flip_prob <= 1.0:
        raise ValueError(f"flip_prob must be in [0, 1], got {flip_prob}")
    matrix = np.eye(num_classes, dtype=np.float64)
    seen: dict[int, tuple[int, int]] = {}
    for pair in pairs:
        pair = tuple(pair)
        if len(pair) != 2:
            raise ValueError(f"each pair must hold two classes, got {pair}")
        a, b = (check_class_id(c, num_classes, what=f"pair {pair}") for c in pair)
        if a == b:
            raise ValueError(f"pair {pair} pairs class {a} with itself")
        for c in (a, b):
            if c in seen:
                raise ValueError(f"class {c} appears in two pairs: {seen[c]} and {pair}")
            seen[c] = pair
        matrix[a, a] = matrix[b, b] = 1.0 - flip_prob
        matrix[a, b] = matrix[b, a] = flip_prob
    return matrix


def validate_transition_matrix(matrix, num_classes: int | None = None) -> np.ndarray:
    """Checks that `matrix` is a (C, C) row-stochastic matrix.

    Args:
      matrix: array-like (C, C).
      num_classes: if given, the expected C.

    Returns:
      The matrix as a float64 (C, C) array.

    Raises:
      ValueError: naming the problem (shape, or the offending row for a negative or
        non-finite entry or a row not summing to 1 within 1e-6).
    """
    m = np.asarray(matrix, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"transition matrix must be square (C, C), got shape {m.shape}")
    if num_classes is not None and m.shape[0] != num_classes:
        raise ValueError(
            f"transition matrix is {m.shape[0]} x {m.shape[1]}, expected "
            f"{num_classes} x {num_classes}"
        )
    for row in range(m.shape[0]):
        if not np.all(np.isfinite(m[row])):
            raise ValueError(f"transition matrix row {row} has a non-finite entry: {m[row]}")
        if np.any(m[row] < 0):
            raise ValueError(f"transition matrix row {row} has a negative entry: {m[row]}")
        total = m[row].sum()
        if abs(total - 1.0) > _ROW_SUM_TOL:
            raise ValueError(f"transition matrix row {row} sums to {float(total)!r}, not 1")
    return m


# The paper's presets (Cao et al. 2021, Sec. 4 and App. C; the authors' code).
# CIFAR-10 heteroskedastic noise: automobile (1) <-> truck (9), cat (3) <-> dog (5).
CIFAR10_HETERO_PAIRS = ((1, 9), (3, 5))
# CIFAR-100: two superclasses, "vehicles 1" and "vehicles 2" (fine-label ids).
CIFAR100_VEHICLE_GROUPS = ((8, 13, 48, 58, 90), (41, 69, 81, 85, 89))
# The probability of leaving the clean label in both presets.
PAPER_FLIP_PROB = 0.4


def group_flip_matrix(
    num_classes: int, groups: Iterable[Sequence[int]], flip_prob: float
) -> np.ndarray:
    """Transition matrix where labels move within groups of classes.

    A class of a group of k classes keeps its label with probability `1 - flip_prob`
    and takes each of the other k - 1 members' labels with probability
    `flip_prob / (k - 1)`; classes in no group are clean. Groups of two are
    `pair_swap_matrix`.

    Args:
      num_classes: C.
      groups: groups of at least two distinct class ids; a class may appear in one
        group only.
      flip_prob: the total probability of leaving the clean label, in [0, 1].

    Returns:
      float64 (C, C) matrix `T[clean, noisy]`.

    Raises:
      ValueError: on a class id out of range, a class in two groups or twice in one,
        a group of fewer than two classes, or a probability outside [0, 1].
    """
    num_classes = check_num_classes(num_classes)
    flip_prob = check_probability(flip_prob, "flip_prob")
    matrix = np.eye(num_classes, dtype=np.float64)
    seen: dict[int, tuple[int, ...]] = {}
    for group in groups:
        group = tuple(group)
        if len(group) < 2:
            raise ValueError(f"each group must hold at least two classes, got {group}")
        members = [check_class_id(c, num_classes, what=f"group {group}") for c in group]
        for c in members:
            if c in seen:
                where = "twice in" if seen[c] is group else f"in two groups: {seen[c]} and"
                raise ValueError(f"class {c} appears {where} {group}")
            seen[c] = group
        spread = flip_prob / (len(members) - 1)
        for c in members:
            matrix[c, members] = spread
            matrix[c, c] = 1.0 - flip_prob
    return matrix


def cifar10_hetero_matrix(flip_prob: float = PAPER_FLIP_PROB) -> np.ndarray:
    """The paper's CIFAR-10 noise: pairs {1, 9} and {3, 5} swap with `flip_prob`.

    Returns:
      float64 (10, 10) matrix `T[clean, noisy]` (`pair_swap_matrix`).
    """
    return pair_swap_matrix(10, CIFAR10_HETERO_PAIRS, flip_prob)


def cifar100_superclass_matrix(flip_prob: float = PAPER_FLIP_PROB) -> np.ndarray:
    """The paper's CIFAR-100 noise within the two vehicle superclasses.

    Each of the ten vehicle classes keeps its label with probability 0.6 (for the
    default `flip_prob` 0.4) and moves to each of the four other classes of its
    superclass with 0.1; the other 90 classes are clean.

    Returns:
      float64 (100, 100) matrix `T[clean, noisy]` (`group_flip_matrix`).
    """
    return group_flip_matrix(100, CIFAR100_VEHICLE_GROUPS, flip_prob)


def uniform_noise_matrix(num_classes: int, rate: float) -> np.ndarray:
    """Class-agnostic noise: with probability `rate`, a uniformly chosen OTHER class.

    Args:
      num_classes: C >= 2.
      rate: the probability of leaving the clean label, in [0, 1].

    Returns:
      float64 (C, C): `1 - rate` on the diagonal, `rate / (C - 1)` elsewhere.

    Raises:
      ValueError: for C < 2 or a rate outside [0, 1].
    """
    num_classes = check_num_classes(num_classes)
    if num_classes < 2:
        raise ValueError(f"uniform noise needs at least two classes, got {num_classes}")
    rate = check_probability(rate, "rate")
    matrix = np.full((num_classes, num_classes), rate / (num_classes - 1), dtype=np.float64)
    np.fill_diagonal(matrix, 1.0 - rate)
    return matrix


def asymmetric_noise_matrix(
    num_classes: int, rates: Sequence[float], targets: Sequence[int]
) -> np.ndarray:
    """Per-class flips to one named target each.

    Class c keeps its label with probability `1 - rates[c]` and takes label
    `targets[c]` with probability `rates[c]`. IMDB in the paper (App. C.1), class 0
    negative and 1 positive: `rates=(0.05, 0.40), targets=(1, 0)`.

    Args:
      num_classes: C.
      rates: float [C] flip probabilities in [0, 1] (0 = class c is clean).
      targets: int [C] target classes; `targets[c]` may equal c only where
        `rates[c] == 0`.

    Returns:
      float64 (C, C) matrix `T[clean, noisy]`.

    Raises:
      ValueError: naming the class on a wrong length, a rate outside [0, 1], a
        target out of range, or a class flipping to itself with a rate > 0.
    """
    num_classes = check_num_classes(num_classes)
    rates, targets = tuple(rates), tuple(targets)
    for name, values in (("rates", rates), ("targets", targets)):
        if len(values) != num_classes:
            raise ValueError(
                f"{name} has {len(values)} entries; expected one per class ({num_classes})"
            )
    matrix = np.eye(num_classes, dtype=np.float64)
    for c, (rate, target) in enumerate(zip(rates, targets, strict=True)):
        rate = check_probability(rate, f"rates[{c}]")
        target = check_class_id(target, num_classes, what=f"targets[{c}]")
        if target == c and rate > 0:
            raise ValueError(f"class {c} flips to itself (targets[{c}] = {c}, rate {rate})")
        matrix[c, c] = 1.0 - rate
        matrix[c, target] += rate
    return matrix
