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

Noise matrices: `pair_swap_matrix`, `group_flip_matrix`, `uniform_noise_matrix`,
`asymmetric_noise_matrix`, any matrix checked by `validate_transition_matrix`, and
the paper's presets `cifar10_hetero_matrix` and `cifar100_superclass_matrix`.
Imbalance targets (examples kept per class): `step_imbalance_targets`,
`long_tailed_targets`, `count_targets`; `imbalance_keep_mask` applies any of them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

NOISE_STREAM = 0
IMBALANCE_STREAM = 1
HOLDOUT_STREAM = 2

_U64 = np.uint64
# SplitMix64 constants (Steele, Lea and Flood 2014): the golden-ratio increment and
# the two multipliers of the finalizer.
_GOLDEN = _U64(0x9E3779B97F4A7C15)
_MUL1 = _U64(0xBF58476D1CE4E5B9)
_MUL2 = _U64(0x94D049BB133111EB)
_ROW_SUM_TOL = 1e-6


# ----------------------------------------------------------------------------------
# Transition matrices


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
    num_classes = _check_num_classes(num_classes)
    flip_prob = float(flip_prob)
    if not 0.0 <= flip_prob <= 1.0:
        raise ValueError(f"flip_prob must be in [0, 1], got {flip_prob}")
    matrix = np.eye(num_classes, dtype=np.float64)
    seen: dict[int, tuple[int, int]] = {}
    for pair in pairs:
        pair = tuple(pair)
        if len(pair) != 2:
            raise ValueError(f"each pair must hold two classes, got {pair}")
        a, b = (_check_class_id(c, num_classes, what=f"pair {pair}") for c in pair)
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
    num_classes = _check_num_classes(num_classes)
    flip_prob = _check_prob(flip_prob, "flip_prob")
    matrix = np.eye(num_classes, dtype=np.float64)
    seen: dict[int, tuple[int, ...]] = {}
    for group in groups:
        group = tuple(group)
        if len(group) < 2:
            raise ValueError(f"each group must hold at least two classes, got {group}")
        members = [_check_class_id(c, num_classes, what=f"group {group}") for c in group]
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
    num_classes = _check_num_classes(num_classes)
    if num_classes < 2:
        raise ValueError(f"uniform noise needs at least two classes, got {num_classes}")
    rate = _check_prob(rate, "rate")
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
    num_classes = _check_num_classes(num_classes)
    rates, targets = tuple(rates), tuple(targets)
    for name, values in (("rates", rates), ("targets", targets)):
        if len(values) != num_classes:
            raise ValueError(
                f"{name} has {len(values)} entries; expected one per class ({num_classes})"
            )
    matrix = np.eye(num_classes, dtype=np.float64)
    for c, (rate, target) in enumerate(zip(rates, targets, strict=True)):
        rate = _check_prob(rate, f"rates[{c}]")
        target = _check_class_id(target, num_classes, what=f"targets[{c}]")
        if target == c and rate > 0:
            raise ValueError(f"class {c} flips to itself (targets[{c}] = {c}, rate {rate})")
        matrix[c, c] = 1.0 - rate
        matrix[c, target] += rate
    return matrix


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
    ids = _check_ids(ids)
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
    ids = _check_ids(ids, size=labels.size)
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
    targets = _check_counts(counts)
    ratio = _check_ratio(ratio)
    if n_max is None:
        n_max = targets.max(initial=0)
    rare = int(np.floor(n_max / ratio))
    for c in classes:
        c = _check_class_id(c, targets.size, what="imbalance classes")
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
    counts = _check_counts(counts)
    if counts.size < 2:
        raise ValueError(f"a long tail needs at least two classes, got {counts.size}")
    ratio = _check_ratio(ratio)
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
    counts = _check_counts(counts)
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
    ids = _check_ids(ids, size=labels.size, unique=True)
    fraction = _check_prob(fraction, "fraction")
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
    ids = _check_ids(ids, size=labels.size, unique=True)
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
    num_classes = _check_num_classes(num_classes)
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


# ----------------------------------------------------------------------------------
# Validation helpers


def check_labels(labels, num_classes: int, *, name: str = "labels") -> np.ndarray:
    """Returns `labels` as int64 [N]; ValueError naming the first one outside [0, C)."""
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must be integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    bad = np.flatnonzero((arr < 0) | (arr >= num_classes))
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"{name}[{i}] = {int(arr[i])} is outside [0, {num_classes}) "
            f"({bad.size} label(s) out of range)"
        )
    return arr


def _check_ids(ids, *, size: int | None = None, unique: bool = False) -> np.ndarray:
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


def _check_counts(counts) -> np.ndarray:
    counts = np.asarray(counts)
    if counts.ndim != 1 or not np.issubdtype(counts.dtype, np.integer):
        raise ValueError(f"counts must be a 1-D integer array, got {counts.dtype} {counts.shape}")
    if np.any(counts < 0):
        raise ValueError(f"counts must be non-negative, got {counts.tolist()}")
    return counts.astype(np.int64)


def _check_ratio(ratio) -> float:
    ratio = float(ratio)
    if not ratio >= 1.0:  # also rejects NaN
        raise ValueError(f"imbalance ratio must be >= 1, got {ratio}")
    return ratio


def _check_prob(value, name: str) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:  # also rejects NaN
        raise ValueError(f"{name} must be in [0, 1], got {value}")
    return value


def _check_num_classes(num_classes) -> int:
    if int(num_classes) != num_classes or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes}")
    return int(num_classes)


def _check_class_id(c, num_classes: int, *, what: str) -> int:
    if int(c) != c or not 0 <= c < num_classes:
        raise ValueError(f"{what}: class {c} is outside [0, {num_classes})")
    return int(c)
