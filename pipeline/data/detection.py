"""How well label-issue flags and scores find the truly flipped training examples.

The records keep each example's clean label, so a flag (cleanlab's is_label_issue)
and a score (1 - label quality: higher = more likely mislabelled) can be judged
against the truth, noisy = (given label != clean label): precision and recall of the
flags, AUROC of the scores, overall and per class of the given label. Pure NumPy,
plus `read` / `markdown` for the evaluate stage.
"""

from __future__ import annotations

import os

import numpy as np

from pipeline.core import stage
from pipeline.data import datasets

LABEL_ISSUES = "label_issues.csv"
CSV_COLUMNS = ("id", "given_label", "predicted_label", "label_quality", "is_label_issue")


def auroc(is_positive, scores) -> float:
    """Area under the ROC curve: P(score of a positive > score of a negative), ties 1/2.

    The Mann-Whitney statistic from average ranks. NaN without both a positive and a
    negative example.
    """
    is_positive = np.asarray(is_positive, bool)
    scores = np.asarray(scores, np.float64)
    n_pos = int(is_positive.sum())
    n_neg = len(is_positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="stable")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    # Average rank (1-based) of each run of tied scores.
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], len(scores)]
    for s, e in zip(starts, ends, strict=True):
        ranks[order[s:e]] = (s + 1 + e) / 2.0
    u = ranks[is_positive].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def detection_metrics(is_noisy, flags, scores) -> dict:
    """Precision and recall of `flags` and AUROC of `scores` against `is_noisy`.

    Returns:
      {"n", "noisy", "flagged", "precision" (NaN if nothing is flagged), "recall"
      (NaN if nothing is noisy), "auroc"}.
    """
    is_noisy = np.asarray(is_noisy, bool)
    flags = np.asarray(flags, bool)
    hits = int(np.sum(flags & is_noisy))
    return {
        "n": int(len(is_noisy)),
        "noisy": int(is_noisy.sum()),
        "flagged": int(flags.sum()),
        "precision": hits / flags.sum() if flags.any() else float("nan"),
        "recall": hits / is_noisy.sum() if is_noisy.any() else float("nan"),
        "auroc": auroc(is_noisy, scores),
    }


def report(given, clean, flags, quality, num_classes: int) -> dict:
    """detection_metrics overall and per class of the given label.

    Args:
      given, clean: int [N] given (noisy) and clean labels of the scored examples.
      flags: bool [N] is_label_issue; quality: float [N] label quality (low = suspect).
    """
    given = np.asarray(given, np.int64)
    is_noisy = given != np.asarray(clean, np.int64)
    scores = -np.asarray(quality, np.float64)
    flags = np.asarray(flags, bool)
    per_class = []
    for c in range(num_classes):
        m = given == c
        per_class.append(detection_metrics(is_noisy[m], flags[m], scores[m]))
    return {"overall": detection_metrics(is_noisy, flags, scores), "per_class": per_class}


def read(workdir: str, num_classes: int) -> dict | None:
    """The detection report of estimate_tau's label_issues.csv, if it wrote one."""
    if not stage.is_complete(workdir, "estimate_tau"):
        return None
    path = os.path.join(stage.stage_dir(workdir, "estimate_tau"), LABEL_ISSUES)
    if not os.path.isfile(path):
        return None
    table = np.genfromtxt(path, delimiter=",", names=True, dtype=None, encoding="utf-8")
    table = np.atleast_1d(table)
    missing = [c for c in CSV_COLUMNS if c not in (table.dtype.names or ())]
    if missing:
        raise stage.PipelineError(f"{path} lacks the column(s) {missing}")
    train = datasets.read_labels(workdir, "train")
    position = {int(i): k for k, i in enumerate(train["id"])}
    unknown = [int(i) for i in table["id"] if int(i) not in position]
    if unknown:
        raise stage.PipelineError(f"{path} names ids {unknown[:3]} that are not train records")
    rows = np.array([position[int(i)] for i in table["id"]], np.int64)
    flags = np.asarray([str(v).strip().lower() == "true" for v in table["is_label_issue"]])
    return report(
        train["label"][rows], train["clean_label"][rows], flags, table["label_quality"], num_classes
    )


def _fmt(v) -> str:
    return "n/a" if v is None or not np.isfinite(v) else f"{v:.3f}"


def markdown(det: dict) -> list[str]:
    """Report lines for the evaluate stage's report.md."""
    lines = [
        "",
        "## Noisy-example detection (cleanlab on the cross-fitted held-out predictions)",
        "",
        "Truth: training label != clean label. Flags: cleanlab's is_label_issue; score:",
        "1 - label quality. Rows: all train examples, then per class of the given label.",
        "",
        "| examples | n | noisy | flagged | precision | recall | AUROC |",
        "|---|---|---|---|---|---|---|",
    ]
    rows = [("all", det["overall"])] + [(f"label {c}", m) for c, m in enumerate(det["per_class"])]
    for name, m in rows:
        lines.append(
            f"| {name} | {m['n']} | {m['noisy']} | {m['flagged']} | {_fmt(m['precision'])} "
            f"| {_fmt(m['recall'])} | {_fmt(m['auroc'])} |"
        )
    return lines
