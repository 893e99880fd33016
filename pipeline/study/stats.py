"""Pure statistics of the study runner (pipeline.study): numbers in, numbers out.

Intervals over seeds are Student-t intervals: mean +- t_{0.975, n-1} * sd / sqrt(n),
sd with n - 1 in the denominator. A paired difference is the per-seed difference of
two methods trained on the same seed (same noise draw, cut, validation split and tau),
with its own t-interval. lambda selection reads validation metrics only.
"""

from __future__ import annotations

import math

import numpy as np

# t_{0.975, df} for df = 1..30 (two-sided 95%), to 4 decimals.
_T975 = (
    12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
    2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
    2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423,
)  # fmt: skip
_Z975 = 1.959963984540054

# Means closer than this are a tie: two lambdas whose scores are the same fraction
# (e.g. per-class hits over 15 and 150 examples, summed in another order) can differ
# in their last bits as floats, and rounding must not decide the selection.
TIE = 1e-9


SELECTION_RULE = (
    "per method: the lam with the highest mean, over the grid seeds, of the final-epoch "
    "mean per-class accuracy on the validation split against its noisy labels "
    f"(val_mean_class_accuracy); ties (means within {TIE:g}: equal up to float rounding) "
    "go to the smaller lam; a lam missing a grid seed (not run yet) makes the selection "
    "pending; a lam whose run failed is not eligible"
)


def t_quantile_975(df: int) -> float:
    """The 0.975 quantile of Student's t with df degrees of freedom (df >= 1).

    A table for df <= 30; beyond, the Cornish-Fisher expansion in 1/df (error < 1e-4).
    """
    df = int(df)
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = _Z975
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    return z + g1 / df + g2 / df**2 + g3 / df**3


def summary(values) -> dict:
    """{"n", "mean", "std", "ci95": [low, high], "values"} of finite floats.

    std and the interval need n >= 2 (else None); n = 0 gives mean None.
    """
    v = [float(x) for x in values]
    n = len(v)
    out = {"n": n, "values": v, "mean": None, "std": None, "ci95": None}
    if n == 0:
        return out
    mean = float(np.mean(v))
    out["mean"] = mean
    if n >= 2:
        sd = float(np.std(v, ddof=1))
        half = t_quantile_975(n - 1) * sd / math.sqrt(n)
        out["std"] = sd
        out["ci95"] = [mean - half, mean + half]
    return out


def paired(a: dict, b: dict) -> dict:
    """summary() of a[seed] - b[seed] over the seeds both dicts hold, plus "seeds"."""
    seeds = sorted(set(a) & set(b))
    out = summary([a[s] - b[s] for s in seeds])
    out["seeds"] = seeds
    return out


def group_accuracy(per_class, counts, classes) -> float | None:
    """Accuracy over a group's test examples: its per-class accuracies weighted by the
    per-class test counts (= the mean over examples, as evaluate computes it)."""
    counts = np.asarray(counts, float)
    idx = [c for c in classes if counts[c] > 0]
    if not idx:
        return None
    acc = np.asarray([per_class[c] for c in idx], float)
    return float(acc @ counts[idx] / counts[idx].sum())


def _beats(mean: float, best: float | None) -> bool:
    """Whether `mean` is higher than `best` by more than a tie (None: no best yet)."""
    return best is None or mean > best + TIE


def select_lam(val_scores: dict) -> dict:
    """The lam SELECTION_RULE picks.

    Args:
      val_scores: lam -> list over the grid seeds of the final-epoch validation score,
        None for a seed not run yet, "failed" for a run that failed.

    Returns:
      {"selected": lam or None (pending, or every lam failed), "pending": bool,
       "table": {lam: {"mean": float or None, "values": [...], "status"}}}.
    """
    table, pending = {}, False
    for lam in sorted(val_scores, key=float):
        vals = list(val_scores[lam])
        if any(v is None for v in vals):
            status, mean = "pending", None
            pending = True
        elif any(isinstance(v, str) for v in vals):
            status, mean = "failed", None
        else:
            status, mean = "complete", float(np.mean(vals))
        table[lam] = {"mean": mean, "values": vals, "status": status}
    selected = None
    if not pending:
        best = None
        for lam, row in table.items():  # ascending lam: a tie keeps the smaller
            if row["mean"] is not None and _beats(row["mean"], best and best[1]):
                best = (lam, row["mean"])
        selected = None if best is None else best[0]
    return {"selected": selected, "pending": pending, "table": table}


GRID_EXTENSION_RULE = (
    "when the selected lam is the largest (smallest) of the grid so far, the next value "
    "on that side is added, at the ratio of the registered grid's two values on that "
    "side, and run on the grid seeds; then the selection is made again; at most "
    "grid_extensions values per side"
)


def extend_grid(registered, grid, selected, max_per_side: int) -> float | None:
    """The lam GRID_EXTENSION_RULE adds next, or None.

    Args:
      registered: the config's grid (>= 2 values when max_per_side > 0).
      grid: the grid so far (registered plus values added).
      selected: the lam selected on `grid` (None: pending or none eligible).
      max_per_side: how many values may be added on each side.
    """
    if selected is None or max_per_side <= 0:
        return None
    reg, cur = sorted(float(x) for x in registered), sorted(float(x) for x in grid)
    if len(reg) < 2:
        return None
    if float(selected) == cur[-1] and sum(x > reg[-1] for x in cur) < max_per_side:
        return cur[-1] * (reg[-1] / reg[-2])
    if float(selected) == cur[0] and sum(x < reg[0] for x in cur) < max_per_side:
        return cur[0] / (reg[1] / reg[0])
    return None


def oracle_lam(test_scores: dict) -> float | None:
    """The lam of the best mean TEST score (the authors' practice: selected on the test
    set, reported only beside the validation choice, labelled as such); ties to the
    smaller lam. test_scores is shaped as select_lam's val_scores: None (not run yet)
    anywhere makes it None; a lam with a "failed" run is not eligible, as in the
    selection."""
    best = None
    for lam in sorted(test_scores, key=float):
        vals = test_scores[lam]
        if not vals or any(v is None for v in vals):
            return None
        if any(isinstance(v, str) for v in vals):
            continue
        m = float(np.mean(vals))
        if _beats(m, best and best[1]):
            best = (lam, m)
    return None if best is None else best[0]


def mean_curve(curves) -> list[float] | None:
    """The per-epoch mean of equally long curves (None if there is none); None at an
    epoch where some curve has no value (a pass every k-th epoch only)."""
    curves = [c for c in curves if c is not None]
    if not curves:
        return None
    n = min(len(c) for c in curves)
    return [
        None if any(c[e] is None for c in curves) else float(np.mean([c[e] for c in curves]))
        for e in range(n)
    ]
