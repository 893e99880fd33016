"""Tests of har_tf.corruption: noise matrices, per-example draws, noise and cut."""

import numpy as np
import pytest

from har_tf import corruption

C = 10
PAIRS = ((0, 6), (2, 4))


# ----------------------------------------------------------------------------------
# Matrices


def test_pair_swap_matrix_by_hand():
    m = corruption.pair_swap_matrix(4, [(0, 3)], 0.25)
    expected = np.array(
        [
            [0.75, 0.0, 0.0, 0.25],
            [0.0, 1.0, 0.0, 0.0],
            [0.0, 0.0, 1.0, 0.0],
            [0.25, 0.0, 0.0, 0.75],
        ]
    )
    assert m.dtype == np.float64
    np.testing.assert_array_equal(m, expected)


def test_pair_swap_matrix_paper_pairs_rows_sum_to_one():
    m = corruption.pair_swap_matrix(C, PAIRS, 0.4)
    np.testing.assert_allclose(m.sum(axis=1), 1.0)
    assert m[0, 6] == m[6, 0] == m[2, 4] == m[4, 2] == pytest.approx(0.4)
    assert m[0, 0] == m[6, 6] == pytest.approx(0.6)
    np.testing.assert_array_equal(np.diag(m)[[1, 3, 5, 7, 8, 9]], 1.0)


def test_pair_swap_matrix_extremes():
    np.testing.assert_array_equal(corruption.pair_swap_matrix(3, [(0, 1)], 0.0), np.eye(3))
    m = corruption.pair_swap_matrix(3, [(0, 1)], 1.0)
    np.testing.assert_array_equal(m, [[0, 1, 0], [1, 0, 0], [0, 0, 1]])


@pytest.mark.parametrize(
    "pairs, prob, match",
    [
        ([(0, 10)], 0.4, "class 10 is outside"),
        ([(-1, 2)], 0.4, "class -1 is outside"),
        ([(0, 6), (6, 2)], 0.4, "class 6 appears in two pairs"),
        ([(3, 3)], 0.4, "with itself"),
        ([(0, 1, 2)], 0.4, "two classes"),
        ([(0, 1)], 1.5, "flip_prob"),
        ([(0, 1)], -0.1, "flip_prob"),
    ],
)
def test_pair_swap_matrix_rejects(pairs, prob, match):
    with pytest.raises(ValueError, match=match):
        corruption.pair_swap_matrix(C, pairs, prob)


def test_validate_transition_matrix_accepts_and_returns_float64():
    out = corruption.validate_transition_matrix([[1, 0], [0.5, 0.5]], num_classes=2)
    assert out.dtype == np.float64 and out.shape == (2, 2)


@pytest.mark.parametrize(
    "matrix, match",
    [
        ([[1.0, 0.0], [0.3, 0.6]], "row 1 sums to"),
        ([[1.2, -0.2], [0.0, 1.0]], "row 0 has a negative entry"),
        ([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], "square"),
        ([1.0, 0.0], "square"),
        ([[1.0, 0.0], [np.nan, 1.0]], "row 1 has a non-finite"),
    ],
)
def test_validate_transition_matrix_rejects(matrix, match):
    with pytest.raises(ValueError, match=match):
        corruption.validate_transition_matrix(matrix)


def test_validate_transition_matrix_checks_num_classes():
    with pytest.raises(ValueError, match="expected 3 x 3"):
        corruption.validate_transition_matrix(np.eye(2), num_classes=3)


def test_validate_transition_matrix_tolerance():
    corruption.validate_transition_matrix([[0.5 + 5e-7, 0.5], [0.0, 1.0]])
    with pytest.raises(ValueError, match="row 0"):
        corruption.validate_transition_matrix([[0.5 + 5e-6, 0.5], [0.0, 1.0]])


# ----------------------------------------------------------------------------------
# Per-example draws


def test_example_uniforms_deterministic_and_order_independent():
    ids = np.arange(5_000)
    u = corruption.example_uniforms(ids, 7)
    np.testing.assert_array_equal(u, corruption.example_uniforms(ids, 7))
    perm = np.random.default_rng(0).permutation(ids.size)
    np.testing.assert_array_equal(corruption.example_uniforms(ids[perm], 7), u[perm])
    # Chunking does not matter either: each chunk alone gives the same draws.
    chunks = [corruption.example_uniforms(ids[s : s + 333], 7) for s in range(0, ids.size, 333)]
    np.testing.assert_array_equal(np.concatenate(chunks), u)


def test_example_uniforms_differ_by_seed_and_stream():
    ids = np.arange(1_000)
    u = corruption.example_uniforms(ids, 0)
    assert not np.any(u == corruption.example_uniforms(ids, 1))
    assert not np.any(u == corruption.example_uniforms(ids, 0, stream=1))
    # Weak independence check between streams: near-zero correlation.
    big = np.arange(100_000)
    r = np.corrcoef(
        corruption.example_uniforms(big, 0), corruption.example_uniforms(big, 0, stream=1)
    )[0, 1]
    assert abs(r) < 0.02


def test_example_uniforms_are_uniform():
    n = 100_000
    u = np.sort(corruption.example_uniforms(np.arange(n), 123))
    assert u.dtype == np.float64 and u.min() >= 0.0 and u.max() < 1.0
    # Kolmogorov-Smirnov statistic against U(0, 1); the 1% critical value is
    # 1.63 / sqrt(n) ~ 0.0052.
    grid = np.arange(1, n + 1) / n
    ks = max(np.max(grid - u), np.max(u - (grid - 1 / n)))
    assert ks < 1.63 / np.sqrt(n)
    # Low-order bits are not stuck: the 2**-53 grid is used.
    assert np.mean((u * 2**53).astype(np.int64) % 2) == pytest.approx(0.5, abs=0.01)


def test_example_uniforms_rejects_bad_input():
    with pytest.raises(ValueError, match="negative"):
        corruption.example_uniforms(np.array([0, -3]), 0)
    with pytest.raises(ValueError, match="seed"):
        corruption.example_uniforms(np.arange(3), -1)
    with pytest.raises(ValueError, match="integers"):
        corruption.example_uniforms(np.array([0.5]), 0)


# ----------------------------------------------------------------------------------
# Label noise


def _balanced_labels(n, seed=0):
    return np.random.default_rng(seed).integers(0, C, size=n)


def test_corrupt_labels_realized_rates_match_matrix():
    n = 100_000
    labels = _balanced_labels(n)
    ids = np.arange(n)
    matrix = corruption.pair_swap_matrix(C, PAIRS, 0.4)
    noisy = corruption.corrupt_labels(labels, ids, matrix, seed=0)
    assert noisy.dtype == np.int64 and noisy.shape == (n,)
    rates = corruption.row_normalize(corruption.transition_counts(labels, noisy, C))
    # ~10k examples per class: the binomial sd of a rate is ~0.005.
    np.testing.assert_allclose(rates, matrix, atol=0.015)
    # Entries of probability zero are never drawn.
    assert np.all(rates[matrix == 0] == 0)


def test_corrupt_labels_reproducible_per_seed():
    n = 20_000
    labels, ids = _balanced_labels(n), np.arange(n)
    matrix = corruption.pair_swap_matrix(C, PAIRS, 0.4)
    a = corruption.corrupt_labels(labels, ids, matrix, seed=3)
    np.testing.assert_array_equal(a, corruption.corrupt_labels(labels, ids, matrix, seed=3))
    b = corruption.corrupt_labels(labels, ids, matrix, seed=4)
    assert np.any(a != b)
    # Only the pair classes ever change.
    changed = np.unique(labels[a != labels])
    assert set(changed.tolist()) <= {0, 2, 4, 6}


def test_corrupt_labels_order_independent():
    n = 5_000
    labels, ids = _balanced_labels(n), np.arange(n) * 3 + 11
    matrix = corruption.pair_swap_matrix(C, PAIRS, 0.4)
    noisy = corruption.corrupt_labels(labels, ids, matrix, seed=0)
    perm = np.random.default_rng(1).permutation(n)
    np.testing.assert_array_equal(
        corruption.corrupt_labels(labels[perm], ids[perm], matrix, seed=0), noisy[perm]
    )


def test_corrupt_labels_identity_is_a_no_op():
    labels = _balanced_labels(1_000)
    out = corruption.corrupt_labels(labels, np.arange(1_000), np.eye(C), seed=0)
    np.testing.assert_array_equal(out, labels)


def test_corrupt_labels_general_matrix():
    # A dense row with a zero in the middle: probability mass must skip that class.
    matrix = np.array([[0.2, 0.0, 0.8], [0.0, 1.0, 0.0], [1 / 3, 1 / 3, 1 / 3]])
    n = 60_000
    labels = np.repeat([0, 2], n // 2)
    noisy = corruption.corrupt_labels(labels, np.arange(n), matrix, seed=5)
    rates = corruption.row_normalize(corruption.transition_counts(labels, noisy, 3))
    np.testing.assert_allclose(rates[[0, 2]], matrix[[0, 2]], atol=0.015)
    assert rates[0, 1] == 0


def test_corrupt_labels_rejects_out_of_range_label():
    labels = np.array([0, 1, 10, 2, 11])
    with pytest.raises(ValueError, match=r"labels\[2\] = 10 is outside \[0, 10\)"):
        corruption.corrupt_labels(labels, np.arange(5), np.eye(C), seed=0)
    with pytest.raises(ValueError, match=r"labels\[1\] = -1"):
        corruption.corrupt_labels(np.array([0, -1]), np.arange(2), np.eye(C), seed=0)


# ----------------------------------------------------------------------------------
# Imbalance


def test_step_imbalance_targets_with_explicit_n_max():
    # Noisy counts drift above the source size; the authors' n_max is the source's.
    counts = np.array([6033, 5967, 6010])
    np.testing.assert_array_equal(
        corruption.step_imbalance_targets(counts, (0,), 10.0, n_max=6000), [600, 5967, 6010]
    )
    np.testing.assert_array_equal(
        corruption.step_imbalance_targets(counts, (0,), 10.0), [603, 5967, 6010]
    )


def test_imbalance_targets_accept_plain_lists():
    counts = [100, 95, 90, 85, 80]
    np.testing.assert_array_equal(
        corruption.step_imbalance_targets(counts, [0, 2], 10.0),
        corruption.step_imbalance_targets(np.array(counts), [0, 2], 10.0),
    )
    np.testing.assert_array_equal(
        corruption.long_tailed_targets(counts, 10.0),
        corruption.long_tailed_targets(np.array(counts), 10.0),
    )


def test_step_imbalance_targets_by_hand():
    counts = np.array([100, 95, 50, 101, 7])
    targets = corruption.step_imbalance_targets(counts, (0, 2, 4), 10.0)
    # floor(101 / 10) = 10; class 4 has only 7, so it keeps 7.
    np.testing.assert_array_equal(targets, [10, 95, 10, 101, 7])
    assert targets.dtype == np.int64
    np.testing.assert_array_equal(corruption.step_imbalance_targets(counts, (), 10.0), counts)
    np.testing.assert_array_equal(
        corruption.step_imbalance_targets(counts, (1,), 1.0), counts
    )  # ratio 1 cuts to n_max: nothing changes
    np.testing.assert_array_equal(
        corruption.step_imbalance_targets(counts, (3,), 3.0), [100, 95, 50, 33, 7]
    )


@pytest.mark.parametrize(
    "classes, ratio, match",
    [((0,), 0.5, "ratio must be >= 1"), ((5,), 10.0, "class 5 is outside"), ((-1,), 2, "-1")],
)
def test_step_imbalance_targets_rejects(classes, ratio, match):
    with pytest.raises(ValueError, match=match):
        corruption.step_imbalance_targets(np.array([10, 20, 30, 40, 50]), classes, ratio)


def test_imbalance_keep_mask_keeps_exact_targets():
    n = 30_000
    labels = _balanced_labels(n, seed=2)
    ids = np.arange(n)
    counts = np.bincount(labels, minlength=C)
    targets = corruption.step_imbalance_targets(counts, (0, 2, 4, 6), 10.0)
    keep = corruption.imbalance_keep_mask(labels, ids, targets, seed=0)
    assert keep.dtype == bool
    np.testing.assert_array_equal(np.bincount(labels[keep], minlength=C), targets)
    # The kept examples of a cut class are exactly those with the smallest keys.
    keys = corruption.imbalance_sort_keys(ids, seed=0)
    for c in (0, 2, 4, 6):
        members = labels == c
        assert keys[members & keep].max() < keys[members & ~keep].min()


def test_imbalance_keep_mask_order_independent():
    n = 10_000
    labels = _balanced_labels(n, seed=4)
    ids = np.random.default_rng(9).choice(10 * n, size=n, replace=False)
    targets = np.full(C, 300)
    keep = corruption.imbalance_keep_mask(labels, ids, targets, seed=1)
    perm = np.random.default_rng(5).permutation(n)
    keep_perm = corruption.imbalance_keep_mask(labels[perm], ids[perm], targets, seed=1)
    assert set(ids[keep].tolist()) == set(ids[perm][keep_perm].tolist())
    other = corruption.imbalance_keep_mask(labels, ids, targets, seed=2)
    assert set(ids[keep].tolist()) != set(ids[other].tolist())


def test_imbalance_keep_mask_zero_and_oversized_targets():
    labels = np.array([0, 0, 1, 1, 1])
    keep = corruption.imbalance_keep_mask(labels, np.arange(5), np.array([0, 99]), seed=0)
    np.testing.assert_array_equal(keep, [False, False, True, True, True])


def test_imbalance_keep_mask_rejects_bad_input():
    with pytest.raises(ValueError, match="unique"):
        corruption.imbalance_keep_mask(np.array([0, 1]), np.array([4, 4]), np.array([1, 1]), seed=0)
    with pytest.raises(ValueError, match=r"labels\[1\] = 2"):
        corruption.imbalance_keep_mask(np.array([0, 2]), np.arange(2), np.array([1, 1]), seed=0)


def test_smallest_by_key_breaks_ties_by_id():
    keys = np.array([0.5, 0.1, 0.5, 0.5, 0.9])
    ids = np.array([30, 7, 10, 20, 1])
    np.testing.assert_array_equal(corruption.smallest_by_key(keys, ids, 3), [1, 2, 3])
    np.testing.assert_array_equal(corruption.smallest_by_key(keys, ids, 0), [])
    np.testing.assert_array_equal(corruption.smallest_by_key(keys, ids, 10), [1, 2, 3, 0, 4])


def test_smallest_by_key_is_mergeable():
    # The distributed recipe: top-k per chunk, then top-k of the union, equals the
    # global top-k.
    n, k = 9_000, 700
    ids = np.arange(n)
    keys = corruption.imbalance_sort_keys(ids, seed=0)
    want = ids[corruption.smallest_by_key(keys, ids, k)]
    partial = [
        ids[s : s + 1000][corruption.smallest_by_key(keys[s : s + 1000], ids[s : s + 1000], k)]
        for s in range(0, n, 1000)
    ]
    merged = np.concatenate(partial)
    got = merged[corruption.smallest_by_key(keys[merged], merged, k)]
    np.testing.assert_array_equal(got, want)


# ----------------------------------------------------------------------------------
# Realized counts


def test_transition_counts_and_row_normalize():
    clean = np.array([0, 0, 0, 1, 2, 2])
    noisy = np.array([0, 1, 1, 1, 2, 0])
    counts = corruption.transition_counts(clean, noisy, 4)
    np.testing.assert_array_equal(counts, [[1, 2, 0, 0], [0, 1, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]])
    assert counts.dtype == np.int64
    rates = corruption.row_normalize(counts)
    np.testing.assert_allclose(rates[0], [1 / 3, 2 / 3, 0, 0])
    np.testing.assert_array_equal(rates[3], 0.0)  # empty class: zeros, not NaN


def test_transition_counts_rejects_out_of_range():
    with pytest.raises(ValueError, match=r"noisy\[1\] = 4"):
        corruption.transition_counts(np.array([0, 1]), np.array([0, 4]), 4)


# ----------------------------------------------------------------------------------
# Noise presets and kinds


def test_cifar10_hetero_matrix_by_hand():
    m = corruption.cifar10_hetero_matrix()
    expected = np.eye(10)
    for a, b in ((1, 9), (3, 5)):  # automobile <-> truck, cat <-> dog
        expected[a, a] = expected[b, b] = 0.6
        expected[a, b] = expected[b, a] = 0.4
    np.testing.assert_allclose(m, expected, rtol=0, atol=1e-15)
    assert m[1, 9] == m[3, 5] == pytest.approx(0.4) and m[0, 0] == m[8, 8] == 1.0
    np.testing.assert_allclose(corruption.cifar10_hetero_matrix(0.2)[9], [0, 0.2] + [0] * 7 + [0.8])


def test_cifar100_superclass_matrix_by_hand():
    m = corruption.cifar100_superclass_matrix()
    assert m.shape == (100, 100)
    vehicles_1, vehicles_2 = (8, 13, 48, 58, 90), (41, 69, 81, 85, 89)
    for group, other in ((vehicles_1, vehicles_2), (vehicles_2, vehicles_1)):
        for a in group:
            row = np.zeros(100)
            row[list(group)] = 0.1
            row[a] = 0.6
            np.testing.assert_allclose(m[a], row, rtol=0, atol=1e-15)
            assert np.all(m[a, list(other)] == 0)
    assert m[8, 13] == pytest.approx(0.1) and m[90, 8] == pytest.approx(0.1)
    assert m[41, 41] == pytest.approx(0.6) and m[41, 8] == 0
    clean = [c for c in range(100) if c not in vehicles_1 + vehicles_2]
    np.testing.assert_array_equal(m[np.ix_(clean, clean)], np.eye(90))
    np.testing.assert_allclose(m.sum(axis=1), 1.0)


def test_group_flip_matrix_by_hand_and_pairs_are_groups_of_two():
    m = corruption.group_flip_matrix(5, [(0, 2, 3)], 0.3)
    expected = np.array(
        [
            [0.7, 0.0, 0.15, 0.15, 0.0],
            [0.0, 1.0, 0.0, 0.0, 0.0],
            [0.15, 0.0, 0.7, 0.15, 0.0],
            [0.15, 0.0, 0.15, 0.7, 0.0],
            [0.0, 0.0, 0.0, 0.0, 1.0],
        ]
    )
    np.testing.assert_allclose(m, expected, rtol=0, atol=1e-15)
    np.testing.assert_array_equal(
        corruption.group_flip_matrix(C, PAIRS, 0.4), corruption.pair_swap_matrix(C, PAIRS, 0.4)
    )


@pytest.mark.parametrize(
    "groups, prob, match",
    [
        ([(0, 1), (1, 2)], 0.4, r"class 1 appears in two groups: \(0, 1\) and \(1, 2\)"),
        ([(0, 1, 1)], 0.4, r"class 1 appears twice in \(0, 1, 1\)"),
        ([(4,)], 0.4, "at least two classes"),
        ([(0, 10)], 0.4, "class 10 is outside"),
        ([(0, 1)], 1.01, "flip_prob must be in"),
    ],
)
def test_group_flip_matrix_rejects(groups, prob, match):
    with pytest.raises(ValueError, match=match):
        corruption.group_flip_matrix(C, groups, prob)


def test_uniform_noise_matrix_by_hand():
    m = corruption.uniform_noise_matrix(4, 0.3)
    expected = np.array(
        [
            [0.7, 0.1, 0.1, 0.1],
            [0.1, 0.7, 0.1, 0.1],
            [0.1, 0.1, 0.7, 0.1],
            [0.1, 0.1, 0.1, 0.7],
        ]
    )
    np.testing.assert_allclose(m, expected, rtol=0, atol=1e-15)
    np.testing.assert_array_equal(corruption.uniform_noise_matrix(2, 1.0), [[0, 1], [1, 0]])
    np.testing.assert_array_equal(corruption.uniform_noise_matrix(3, 0.0), np.eye(3))
    with pytest.raises(ValueError, match="at least two classes"):
        corruption.uniform_noise_matrix(1, 0.1)
    with pytest.raises(ValueError, match="rate must be in"):
        corruption.uniform_noise_matrix(3, -0.1)


def test_asymmetric_noise_matrix_by_hand():
    # IMDB (paper App. C.1): 5% of negatives become positive, 40% of positives negative.
    imdb = corruption.asymmetric_noise_matrix(2, (0.05, 0.40), (1, 0))
    np.testing.assert_allclose(imdb, [[0.95, 0.05], [0.40, 0.60]], rtol=0, atol=1e-15)
    m = corruption.asymmetric_noise_matrix(3, (0.2, 0.0, 0.5), (2, 1, 0))
    np.testing.assert_allclose(m, [[0.8, 0, 0.2], [0, 1, 0], [0.5, 0, 0.5]], rtol=0, atol=1e-15)


@pytest.mark.parametrize(
    "rates, targets, match",
    [
        ((0.1,), (1, 0), "rates has 1 entries; expected one per class"),
        ((0.1, 0.1), (1,), "targets has 1 entries"),
        ((0.1, 1.5), (1, 0), r"rates\[1\] must be in \[0, 1\]"),
        ((0.1, 0.1), (1, 2), r"targets\[1\]: class 2 is outside \[0, 2\)"),
        ((0.1, 0.1), (0, 0), r"class 0 flips to itself"),
    ],
)
def test_asymmetric_noise_matrix_rejects(rates, targets, match):
    with pytest.raises(ValueError, match=match):
        corruption.asymmetric_noise_matrix(2, rates, targets)


def _realized(matrix, labels, seed=0):
    noisy = corruption.corrupt_labels(labels, np.arange(labels.size), matrix, seed=seed)
    counts = corruption.transition_counts(labels, noisy, matrix.shape[0])
    return corruption.row_normalize(counts), counts


VEHICLES = np.array([8, 13, 48, 58, 90, 41, 69, 81, 85, 89])


@pytest.mark.parametrize(
    "name, matrix, classes",
    [
        ("cifar10_hetero", corruption.cifar10_hetero_matrix(), np.arange(10)),
        # Labels drawn among the ten vehicle classes only: 10k each, like the others.
        ("cifar100_superclass", corruption.cifar100_superclass_matrix(), VEHICLES),
        ("uniform", corruption.uniform_noise_matrix(10, 0.3), np.arange(10)),
        ("imdb", corruption.asymmetric_noise_matrix(2, (0.05, 0.4), (1, 0)), np.arange(2)),
        (
            "matrix",
            np.array([[0.5, 0.3, 0.2], [0.0, 0.9, 0.1], [0.25, 0.25, 0.5]]),
            np.arange(3),
        ),
    ],
)
def test_realized_rates_of_each_kind_on_1e5_labels(name, matrix, classes):
    n = 100_000
    labels = np.random.default_rng(7).choice(classes, size=n)
    rates, counts = _realized(matrix, labels)
    # >= 10k examples per class: a rate's binomial sd is <= 0.005, so 0.02 is 4 sd.
    np.testing.assert_allclose(rates[classes], matrix[classes], rtol=0, atol=0.02)
    assert np.all(counts[matrix == 0] == 0), name  # Impossible moves never happen.


def test_cifar100_superclass_leaves_the_other_classes_alone():
    labels = np.random.default_rng(3).integers(0, 100, size=100_000)
    rates, _ = _realized(corruption.cifar100_superclass_matrix(), labels)
    others = np.setdiff1d(np.arange(100), VEHICLES)
    np.testing.assert_array_equal(rates[others][:, others], np.eye(90))
    # ~1000 per vehicle class: the stay rate is 0.6 within ~3 sd (sd 0.0155).
    np.testing.assert_allclose(np.diag(rates)[VEHICLES], 0.6, atol=0.05)


def test_uniform_noise_spreads_evenly_over_the_other_classes():
    labels = np.zeros(100_000, dtype=np.int64)  # one class, all flips out of it
    rates, _ = _realized(corruption.uniform_noise_matrix(5, 0.4), labels)
    assert rates[0, 0] == pytest.approx(0.6, abs=0.01)
    np.testing.assert_allclose(rates[0, 1:], 0.1, atol=0.005)  # sd ~0.001


# ----------------------------------------------------------------------------------
# Imbalance kinds


def test_long_tailed_targets_cifar10_lt_published_sizes():
    # Cao et al. 2019 (LDAM), CIFAR-10-LT with ratio 100: the per-class sizes and
    # the totals of the published CIFAR-10-LT / CIFAR-100-LT splits.
    got = corruption.long_tailed_targets(np.full(10, 5000), 100.0)
    assert got.tolist() == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    assert got.dtype == np.int64
    assert corruption.long_tailed_targets(np.full(10, 5000), 10.0).sum() == 20431
    assert corruption.long_tailed_targets(np.full(100, 500), 100.0).sum() == 10847
    assert corruption.long_tailed_targets(np.full(100, 500), 10.0).sum() == 19573


def test_long_tailed_targets_by_hand():
    # ratio 16 over 5 classes: n_max * 16 ** (-c / 4) = 100, 50, 25, 12.5, 6.25.
    counts = np.array([100, 100, 100, 100, 100])
    assert corruption.long_tailed_targets(counts, 16.0).tolist() == [100, 50, 25, 12, 6]
    # Never above a class's own count; n_max from the caller (the source, pre-noise).
    counts = np.array([90, 30, 100, 5, 100])
    got = corruption.long_tailed_targets(counts, 16.0, n_max=200)
    assert got.tolist() == [90, 30, 50, 5, 12]
    assert corruption.long_tailed_targets(counts, 1.0).tolist() == counts.tolist()
    with pytest.raises(ValueError, match="ratio must be >= 1"):
        corruption.long_tailed_targets(counts, 0.9)
    with pytest.raises(ValueError, match="at least two classes"):
        corruption.long_tailed_targets(np.array([5]), 2.0)


def test_count_targets_by_hand_and_rejects():
    counts = np.array([10, 20, 30])
    assert corruption.count_targets(counts, (5, 25, 0)).tolist() == [5, 20, 0]
    with pytest.raises(ValueError, match="2 entries; expected one per class"):
        corruption.count_targets(counts, (1, 2))
    with pytest.raises(ValueError, match="class 1: .*integer >= 0, got -1"):
        corruption.count_targets(counts, (1, -1, 2))
    with pytest.raises(ValueError, match="class 2: .*got 2.5"):
        corruption.count_targets(counts, (1, 1, 2.5))


def test_keep_mask_with_long_tailed_targets_keeps_exact_counts():
    n = 30_000
    labels = _balanced_labels(n, seed=6)
    ids = np.arange(n)
    counts = np.bincount(labels, minlength=C)
    targets = corruption.long_tailed_targets(counts, 10.0)
    keep = corruption.imbalance_keep_mask(labels, ids, targets, seed=0)
    np.testing.assert_array_equal(np.bincount(labels[keep], minlength=C), targets)
    assert targets[0] == counts[0] and targets[-1] == counts.max() // 10  # 309 of 2923
