"""Label noise and class imbalance, as pure and deterministic numpy functions.

Every random decision about an example is a function of `(seed, stream, id)` only
(`example_uniforms`, a counter-based hash), never of the order in which examples are
seen. That is what lets a distributed job (the Beam `preprocess` stage), which sees
the data in arbitrary chunks and orders, corrupt and cut exactly the same examples
as these in-memory reference functions.

Streams: 0 draws the noisy label (`corrupt_labels`), 1 orders examples for the
imbalance cut (`imbalance_sort_keys`).

Conventions: `C` is the number of classes, `N` the number of examples; a transition
matrix `T` has shape (C, C) with `T[clean, noisy]` the probability that an example
of class `clean` is given label `noisy`.

Noise matrices (har_tf/noise_matrices.py, re-exported here): `pair_swap_matrix`,
`group_flip_matrix`, `uniform_noise_matrix`, `asymmetric_noise_matrix`, any matrix
checked by `validate_transition_matrix`, and the paper's presets
`cifar10_hetero_matrix` and `cifar100_superclass_matrix`. Argument checks are in
har_tf/checks.py.
Imbalance targets (examples kept per class): `step_imbalance_targets`,
`long_tailed_targets`, `count_targets`; `imbalance_keep_mask` applies any of them.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from har_tf.checks import (
    check_class_id,
    check_counts,
    check_ids,
    check_labels,
    check_num_classes,
    check_probability,
    check_ratio,
)
from har_tf.noise_matrices import (
    CIFAR10_HETERO_PAIRS,
    CIFAR100_VEHICLE_GROUPS,
    PAPER_FLIP_PROB,
    asymmetric_noise_matrix,
    cifar10_hetero_matrix,
    cifar100_superclass_matrix,
    group_flip_matrix,
    pair_swap_matrix,
    uniform_noise_matrix,
    validate_transition_matrix,
)

# Re-exported: the noise matrices and check_labels are part of this module's API.
__all__ = [
    "CIFAR10_HETERO_PAIRS",
    "CIFAR100_VEHICLE_GROUPS",
    "HOLDOUT_STREAM",
    "IMBALANCE_STREAM",
    "NOISE_STREAM",
    "PAPER_FLIP_PROB",
    "asymmetric_noise_matrix",
    "check_labels",
    "cifar10_hetero_matrix",
    "cifar100_superclass_matrix",
    "corrupt_labels",
    "count_targets",
    "example_uniforms",
    "group_flip_matrix",
    "imbalance_keep_mask",
    "imbalance_sort_keys",
    "long_tailed_targets",
    "pair_swap_matrix",
    "row_normalize",
    "smallest_by_key",
    "step_imbalance_targets",
    "stratified_holdout_mask",
    "transition_counts",
    "uniform_noise_matrix",
    "validate_transition_matrix",
]

NOISE_STREAM = 0
IMBALANCE_STREAM = 1
HOLDOUT_STREAM = 2

_U64 = np.uint64
# SplitMix64 constants (Steele, Lea and Flood 2014): the golden-ratio increment and
# the two multipliers of the finalizer.
_GOLDEN = _U64(0x9E3779B97F4A7C15)
_MUL1 = _U64(0xBF58476D1CE4E5B9)
_MUL2 = _U64(0x94D049BB133111EB)


# ----------------------------------------------------------------------------------
# Per-example randomness


def _mix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64 finalizer on a uint64 array (wrapping arithmetic)."""
    z = (z ^ (z >> _U64(30))) * _MUL1
    z = (z ^ (z >> _U64(27))) * _MUL2
    return z ^ (z >> _U64(31))


def _splitmix(state: np.ndarray, index: np.ndarray) -> np.ndarray:
    """The `index`-th output of a SplitMix64 generator seeded with `state`."""
    return _mix64(state + (index + _U64(1)) * _GOLDEN)


def _as_uint64_scalar(value, name: str) -> np.ndarray:
    value = int(value)
    if not 0 <= value < 2**64:
        raise ValueError(f"{name} must be an integer in [0, 2**64), got {value}")
    # A 1-element array, not a numpy scalar: array arithmetic wraps silently, while
    # scalar arithmetic warns on the (intended) uint64 overflow.
    return np.array([value], dtype=np.uint64)


def example_uniforms(ids, seed: int, *, stream: int = 0) -> np.ndarray:
    """One uniform draw per example that depends only on (seed, stream, id).

    A counter-based hash: the stream key is the `stream`-th SplitMix64 output for
    `seed`, and example `id` gets the `id`-th output of SplitMix64 seeded with that
    key. So a draw does not depend on the order, chunking or sharding of the data.

    Args:
      ids: int [N] non-negative example ids.
      seed: non-negative integer seed.
      stream: non-negative integer selecting an independent stream of draws.

    Returns:
      float64 [N] in [0, 1), multiples of 2**-53.
    """
    ids = check_ids(ids)
    key = _splitmix(_as_uint64_scalar(seed, "seed"), _as_uint64_scalar(stream, "stream"))
    bits = _splitmix(key, ids.astype(np.uint64))
    return (bits >> _U64(11)).astype(np.float64) * (1.0 / 2**53)


# ----------------------------------------------------------------------------------
# Label noise


def corrupt_labels(labels, ids, matrix, *, seed: int) -> np.ndarray:
    """Draws a noisy label for each example from its clean label's row of `matrix`.

    Inverse CDF sampling with `example_uniforms(ids, seed, stream=0)`: example i gets
    the first class j with u_i < sum_{k <= j} T[labels_i, k].

    Args:
      labels: int [N] clean labels in [0, C).
      ids: int [N] unique, non-negative example ids (the source index).
      matrix: (C, C) transition matrix `T[clean, noisy]`.
      seed: the noise seed.

    Returns:
      int64 [N] noisy labels.
    """
    matrix = validate_transition_matrix(matrix)
    num_classes = matrix.shape[0]
    labels = check_labels(labels, num_classes)
    ids = check_ids(ids, size=labels.size)
    u = example_uniforms(ids, seed, stream=NOISE_STREAM)
    cdf = np.cumsum(matrix, axis=1)
    # Rows sum to 1 only within tolerance; pin the last edge so u < 1 always lands.
    cdf[:, -1] = 1.0
    noisy = labels.copy()
    for c in np.unique(labels):
        members = labels == c
        noisy[members] = np.searchsorted(cdf[c], u[members], side="right")
    return np.minimum(noisy, num_classes - 1)


# ----------------------------------------------------------------------------------
# Imbalance


def step_imbalance_targets(
    counts, classes: Iterable[int], ratio: float, *, n_max: int | None = None
) -> np.ndarray:
    """Per-class target counts of a step imbalance.

    Classes in `classes` are cut to floor(n_max / ratio) examples (never above
    their own count); the others keep their count.

    Args:
      counts: int [C] examples per class before the cut.
      classes: the class ids to cut.
      ratio: n_max / n_rare, >= 1.
      n_max: the size of the largest class; default max(counts). The authors'
        code uses the source's per-class size before any noise (CIFAR-10: 5000),
        which the preprocess stage passes here.

    Returns:
      int64 [C] target counts.
    """
    targets = check_counts(counts)
    ratio = check_ratio(ratio)
    if n_max is None:
        n_max = targets.max(initial=0)
    rare = int(np.floor(n_max / ratio))
    for c in classes:
        c = check_class_id(c, targets.size, what="imbalance classes")
        targets[c] = min(targets[c], rare)
    return targets


def long_tailed_targets(counts, ratio: float, *, n_max: int | None = None) -> np.ndarray:
    """Per-class target counts of an exponential long tail (Cao et al. 2019, LDAM).

    Class c is cut to `floor(n_max * (1 / ratio) ** (c / (C - 1)))` examples (never
    above its own count): class 0 keeps n_max, class C - 1 keeps n_max / ratio. The
    formula and rounding are the LDAM code's `int(img_max * imb_factor ** (c / (C -
    1.0)))` with `imb_factor = 1 / ratio`; CIFAR-10, ratio 100: 5000, 2997, 1796,
    1077, 645, 387, 232, 139, 83, 50.

    Args:
      counts: int [C] examples per class before the cut, C >= 2.
      ratio: n_max / n_min, >= 1.
      n_max: the size of the head class; default max(counts) (see
        `step_imbalance_targets`).

    Returns:
      int64 [C] target counts.
    """
    counts = check_counts(counts)
    if counts.size < 2:
        raise ValueError(f"a long tail needs at least two classes, got {counts.size}")
    ratio = check_ratio(ratio)
    if n_max is None:
        n_max = int(counts.max(initial=0))
    exponents = np.arange(counts.size) / (counts.size - 1.0)
    tail = np.array([int(n_max * (1.0 / ratio) ** e) for e in exponents], dtype=np.int64)
    return np.minimum(counts, tail)


def count_targets(counts, wanted) -> np.ndarray:
    """Per-class target counts given explicitly: `min(counts[c], wanted[c])`.

    Args:
      counts: int [C] examples per class before the cut.
      wanted: int [C] the examples to keep per class (>= 0).

    Returns:
      int64 [C] target counts.

    Raises:
      ValueError: naming the class on a wrong length or a negative or non-integer entry.
    """
    counts = check_counts(counts)
    wanted = tuple(wanted)
    if len(wanted) != counts.size:
        raise ValueError(
            f"counts to keep has {len(wanted)} entries; expected one per class ({counts.size})"
        )
    out = np.empty(counts.size, dtype=np.int64)
    for c, w in enumerate(wanted):
        if isinstance(w, bool) or int(w) != w or w < 0:
            raise ValueError(f"class {c}: the count to keep must be an integer >= 0, got {w!r}")
        out[c] = int(w)
    return np.minimum(counts, out)


def imbalance_sort_keys(ids, *, seed: int) -> np.ndarray:
    """The order in which the imbalance cut keeps examples: smallest (key, id) first.

    Within a cut class the examples kept are those with the smallest keys; an exact
    tie (probability ~2**-53 per pair) goes to the smaller id. A distributed job can
    therefore select per class with a top-k on `(key, id)` pairs.

    Args:
      ids: int [N] non-negative example ids.
      seed: the seed (the imbalance uses stream 1 of it).

    Returns:
      float64 [N] keys in [0, 1).
    """
    return example_uniforms(ids, seed, stream=IMBALANCE_STREAM)


def smallest_by_key(keys, ids, k: int) -> np.ndarray:
    """Indices of the `k` smallest `(key, id)` pairs, in increasing order.

    Args:
      keys: float64 [N] sort keys (`imbalance_sort_keys`).
      ids: int [N] example ids, the tie-breaker.
      k: how many to select (all N if k >= N).

    Returns:
      int64 [min(k, N)] indices into `keys`.
    """
    keys = np.asarray(keys, dtype=np.float64)
    ids = np.asarray(ids)
    if keys.shape != ids.shape or keys.ndim != 1:
        raise ValueError(f"keys {keys.shape} and ids {ids.shape} must be equal-length 1-D")
    k = max(0, min(int(k), keys.size))
    if k < keys.size:
        # Partition first so the full lexsort runs on the k candidates (plus any
        # examples tied with the k-th key) rather than on all N.
        kth = np.partition(keys, k - 1)[k - 1] if k else -np.inf
        candidates = np.flatnonzero(keys <= kth)
    else:
        candidates = np.arange(keys.size)
    order = np.lexsort((ids[candidates], keys[candidates]))
    return candidates[order[:k]].astype(np.int64)


def stratified_holdout_mask(labels, ids, fraction: float, *, seed: int) -> np.ndarray:
    """bool [N]: which examples a stratified, seeded held-out split takes.

    In each class c with n_c examples, the round(fraction * n_c) examples with the
    smallest `(example_uniforms(ids, seed, stream=HOLDOUT_STREAM), id)` are held out,
    so every class keeps its share exactly and the choice of an example depends only
    on (seed, its id, its class's members), not on the order of the data.

    Args:
      labels: int [N] class labels (any non-negative ints).
      ids: int [N] unique non-negative example ids.
      fraction: in [0, 1].
      seed: non-negative integer seed.
    """
    labels = np.asarray(labels)
    ids = check_ids(ids, size=labels.size, unique=True)
    fraction = check_probability(fraction, "fraction")
    keys = example_uniforms(ids, seed, stream=HOLDOUT_STREAM)
    held = np.zeros(labels.size, dtype=bool)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        k = int(np.floor(fraction * members.size + 0.5))
        held[members[smallest_by_key(keys[members], ids[members], k)]] = True
    return held


def imbalance_keep_mask(labels, ids, targets, *, seed: int) -> np.ndarray:
    """Which examples survive a cut to `targets` examples per class.

    Within class c exactly min(targets[c], count_c) examples are kept: those with the
    smallest `(imbalance_sort_keys(ids, seed), id)`. The result depends only on the
    set of (id, label) pairs, not on their order.

    Args:
      labels: int [N] the labels the cut is by (noisy or clean), in [0, C).
      ids: int [N] unique, non-negative example ids.
      targets: int [C] examples to keep per class.
      seed: the seed.

    Returns:
      bool [N] keep mask.
    """
    targets = np.asarray(targets)
    if targets.ndim != 1 or not np.issubdtype(targets.dtype, np.integer):
        raise ValueError(f"targets must be a 1-D integer array, got {targets.dtype}")
    if np.any(targets < 0):
        raise ValueError(f"targets must be non-negative, got {targets.tolist()}")
    labels = check_labels(labels, targets.size)
    ids = check_ids(ids, size=labels.size, unique=True)
    keys = imbalance_sort_keys(ids, seed=seed)
    keep = np.zeros(labels.size, dtype=bool)
    for c in range(targets.size):
        members = np.flatnonzero(labels == c)
        chosen = smallest_by_key(keys[members], ids[members], int(targets[c]))
        keep[members[chosen]] = True
    return keep


# ----------------------------------------------------------------------------------
# Realized noise


def transition_counts(clean, noisy, num_classes: int) -> np.ndarray:
    """Realized transition counts.

    Args:
      clean: int [N] clean labels in [0, C).
      noisy: int [N] noisy labels in [0, C).
      num_classes: C.

    Returns:
      int64 (C, C): entry [i, j] counts examples of clean class i labelled j.
    """
    num_classes = check_num_classes(num_classes)
    clean = check_labels(clean, num_classes, name="clean")
    noisy = check_labels(noisy, num_classes, name="noisy")
    if clean.shape != noisy.shape:
        raise ValueError(f"clean {clean.shape} and noisy {noisy.shape} differ in length")
    flat = np.bincount(clean * num_classes + noisy, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes).astype(np.int64)


def row_normalize(counts) -> np.ndarray:
    """Rows of a count matrix scaled to sum to 1; an all-zero row stays zero.

    Args:
      counts: (C, C) non-negative counts.

    Returns:
      float64 (C, C).
    """
    counts = np.asarray(counts, dtype=np.float64)
    totals = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
