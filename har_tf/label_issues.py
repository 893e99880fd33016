"""Which examples look mislabelled, from held-out probabilities (via cleanlab).

Confident learning (Northcutt et al., JAIR 2021) as cleanlab implements it: this
module only adapts HAR's held-out predictions to cleanlab's functions and returns a
pandas DataFrame. It needs the `label-issues` extra: `pip install "har-tf[label-issues]"`
(cleanlab and pandas).
"""

from __future__ import annotations

import numpy as np

from har_tf import checks

EXTRA_HINT = (
    'install the label-issues extra: pip install "har-tf[label-issues]" (cleanlab and pandas)'
)
COLUMNS = ("id", "given_label", "predicted_label", "label_quality", "is_label_issue")
# cleanlab's CleanLearning keeps at least this many examples of each given label
# (its default for find_label_issues; cleanlab.filter's own default is 1), so that a
# rare class is never pruned to a handful.
MIN_EXAMPLES_PER_CLASS = 10


def require_cleanlab():
    """Imports cleanlab and pandas, or raises an ImportError that says how to get them."""
    try:
        import cleanlab.count  # noqa: F401
        import cleanlab.filter  # noqa: F401
        import cleanlab.rank  # noqa: F401
        import pandas  # noqa: F401
    except ImportError as e:
        raise ImportError(f"label issues need cleanlab and pandas ({e}); {EXTRA_HINT}") from e


def _check(labels, pred_probs):
    labels = np.asarray(labels)
    pred_probs = np.asarray(pred_probs, np.float64)
    if pred_probs.ndim != 2 or labels.shape != (len(pred_probs),):
        raise ValueError(
            f"labels must be [N] and pred_probs [N, C], got {labels.shape} and {pred_probs.shape}"
        )
    labels = checks.check_labels(labels, pred_probs.shape[1])
    if not np.all(np.isfinite(pred_probs)) or np.any(pred_probs < 0):
        raise ValueError("pred_probs must be finite and >= 0")
    if not np.allclose(pred_probs.sum(axis=1), 1.0, atol=1e-4):
        raise ValueError("each row of pred_probs must sum to 1 (probabilities, not logits)")
    return labels, pred_probs


def find_label_issues(labels, pred_probs, *, ids=None):
    """Per example: the given label, the predicted one, a quality score and a flag.

    Args:
      labels: int [N] given (possibly noisy) labels in [0, C).
      pred_probs: float [N, C] held-out (out-of-sample) class probabilities.
      ids: int [N] example ids for the `id` column; default 0 .. N - 1.

    Returns:
      pandas.DataFrame with N rows, in input order, and columns
        id (int64), given_label (int64), predicted_label (int64, argmax of
        pred_probs), label_quality (float64 in [0, 1]: cleanlab's self-confidence,
        the probability of the given label; low = likely mislabelled),
        is_label_issue (bool: cleanlab.filter.find_label_issues, prune by noise rate,
        with CleanLearning's MIN_EXAMPLES_PER_CLASS: the flags CleanLearning's own
        find_label_issues gives for these probabilities).
    """
    require_cleanlab()
    import cleanlab.filter
    import cleanlab.rank
    import pandas as pd

    labels, pred_probs = _check(labels, pred_probs)
    ids = np.arange(len(labels)) if ids is None else np.asarray(ids)
    if ids.shape != labels.shape:
        raise ValueError(f"ids must have one entry per example, got {ids.shape}")
    # n_jobs=1: cleanlab would otherwise fork a pool of processes (one per core) on
    # every call, from a process that has TensorFlow loaded; its flags are the same
    # for any n_jobs (its docstring), and one process is faster at these sizes.
    flags = cleanlab.filter.find_label_issues(
        labels, pred_probs, n_jobs=1, min_examples_per_class=MIN_EXAMPLES_PER_CLASS
    )
    quality = cleanlab.rank.get_label_quality_scores(labels, pred_probs)
    return pd.DataFrame(
        {
            "id": ids.astype(np.int64),
            "given_label": labels,
            "predicted_label": np.argmax(pred_probs, axis=1).astype(np.int64),
            "label_quality": np.asarray(quality, np.float64),
            "is_label_issue": np.asarray(flags, bool),
        }
    )


def noise_rates(labels, pred_probs) -> np.ndarray:
    """cleanlab's estimate of each class's noise rate, float64 [C].

    For true class c, the fraction of its examples whose given label is another
    class: 1 - P(given = c | true = c), the diagonal of cleanlab's noise matrix
    (`cleanlab.count.estimate_py_and_noise_matrices_from_probabilities`). That is the
    quantity a corruption's transition matrix states as 1 - T[c, c].
    """
    require_cleanlab()
    import cleanlab.count

    labels, pred_probs = _check(labels, pred_probs)
    _, noise_matrix, _, _ = cleanlab.count.estimate_py_and_noise_matrices_from_probabilities(
        labels, pred_probs
    )
    return 1.0 - np.diag(np.asarray(noise_matrix, np.float64))
