"""har_tf.label_issues: cleanlab on held-out probabilities, checked against known truth."""

import numpy as np
import pytest

from har_tf import label_issues


def _confident(clean, num_classes, rng, confidence=0.9):
    """Held-out probabilities of a good model: most mass on the clean label."""
    proba = rng.dirichlet(np.ones(num_classes), len(clean)) * (1 - confidence)
    proba[np.arange(len(clean)), clean] += confidence
    return proba


def test_noise_rate_is_per_true_class():
    rng = np.random.default_rng(0)
    clean = np.repeat([0, 1, 2], 400)
    given = clean.copy()
    flip = (clean == 0) & (rng.random(len(clean)) < 0.4)  # 0 -> 1 only
    given[flip] = 1
    proba = np.full((len(clean), 3), 0.015)
    proba[np.arange(len(clean)), clean] = 0.97  # the same confidence everywhere
    rates = label_issues.noise_rates(given, proba)
    # True class 0 loses ~40% of its examples to label 1; classes 1 and 2 keep theirs
    # (per GIVEN label it would be the reverse: label 1 is the impure one).
    np.testing.assert_allclose(rates, [flip.sum() / 400, 0.0, 0.0], atol=1e-6)


def test_find_label_issues_flags_the_flipped_examples():
    rng = np.random.default_rng(1)
    clean = np.repeat(np.arange(4), 100)
    given = clean.copy()
    flip = rng.random(len(clean)) < 0.1
    given[flip] = (clean[flip] + 1) % 4
    proba = _confident(clean, 4, rng)
    frame = label_issues.find_label_issues(given, proba, ids=np.arange(len(given)) + 1000)
    assert list(frame.columns) == list(label_issues.COLUMNS)
    np.testing.assert_array_equal(frame["id"], np.arange(len(given)) + 1000)
    np.testing.assert_array_equal(frame["predicted_label"], np.argmax(proba, axis=1))
    np.testing.assert_allclose(frame["label_quality"], proba[np.arange(len(given)), given])
    np.testing.assert_array_equal(frame["is_label_issue"], flip)


def test_flags_equal_cleanlearning_where_a_rare_class_would_be_pruned_away():
    # Class 2 has 12 examples, 8 of them really class 0. cleanlab.filter's default
    # (keep at least 1) flags most of the 8; CleanLearning keeps at least 10 per class.
    import cleanlab.filter
    from cleanlab.classification import CleanLearning

    rng = np.random.default_rng(0)
    given = np.repeat([0, 1, 2], [200, 200, 12])
    clean = given.copy()
    clean[-8:] = 0
    logits = rng.normal(size=(len(given), 3))
    logits[np.arange(len(given)), clean] += 4.0
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    reference = CleanLearning().find_label_issues(labels=given, pred_probs=proba)
    frame = label_issues.find_label_issues(given, proba)
    np.testing.assert_array_equal(frame["is_label_issue"], reference["is_label_issue"])
    np.testing.assert_allclose(frame["label_quality"], reference["label_quality"])
    # The case binds: with cleanlab.filter's default the rare class loses more.
    loose = cleanlab.filter.find_label_issues(given, proba, n_jobs=1)
    assert loose[given == 2].sum() > frame["is_label_issue"][given == 2].sum() > 0
    assert (~frame["is_label_issue"][given == 2]).sum() >= label_issues.MIN_EXAMPLES_PER_CLASS


@pytest.mark.parametrize(
    "labels,proba,match",
    [
        ([0, 3], np.full((2, 3), 1 / 3), r"labels\[1\] = 3 is outside \[0, 3\)"),
        ([0, 1], np.full((2, 3), 0.5), "must sum to 1"),
        ([0, 1, 1], np.full((2, 3), 1 / 3), "labels must be"),
        ([0.0, 1.0], np.full((2, 3), 1 / 3), "integers"),
    ],
)
def test_bad_input(labels, proba, match):
    with pytest.raises(ValueError, match=match):
        label_issues.find_label_issues(np.asarray(labels), proba)
