"""The evaluate stage's report.md: its report.json as Markdown tables, one section each.

Pure formatting: report.json in (see pipeline/evaluate.py for its fields), text out.
"""

from __future__ import annotations

import numpy as np

from pipeline.data import detection
from pipeline.evaluation import blessing

BEST_EPOCH_TITLE = "## Best epoch, selected on the test set (as the authors report)"
BEST_EPOCH_UNAVAILABLE = (
    "Not available: config.eval.per_epoch_test was False, so training did not evaluate "
    "on the test split after each epoch."
)
BLESSING_TITLE = "## Blessing (config.eval.thresholds)"


def _fmt(v, spec: str = ".3f") -> str:
    return "n/a" if v is None or not np.isfinite(v) else format(v, spec)


def _pct(v) -> str:
    return _fmt(None if v is None else 100 * v, ".1f")


def final_epoch_table(report: dict, groups: list[str]) -> list[str]:
    cols = [*groups, "overall"]
    lines = [
        "# Results on the clean test split",
        "",
        "Accuracy (%) at the final epoch of each run.",
        "",
        "| run | " + " | ".join(cols) + " | top-5 | lambda |",
        "|---" * (len(cols) + 3) + "|",
    ]
    for name, r in report["runs"].items():
        vals = [r["test"]["groups"][g] for g in groups] + [r["test"]["overall"]]
        lines.append(
            f"| {name} | "
            + " | ".join(_pct(v) for v in vals)
            + f" | {_pct(r['test']['top5'])} | {r['lam']:g} |"
        )
    return lines


def best_epoch_table(report: dict, groups: list[str]) -> list[str]:
    lines = ["", BEST_EPOCH_TITLE, ""]
    if not report["per_epoch_test"]:
        return lines + [BEST_EPOCH_UNAVAILABLE]
    cols = [*groups, "overall"]
    lines += [
        "Accuracy (%) at each run's epoch of highest test accuracy (the first on ties).",
        "The epoch is chosen by looking at the test set, as the authors do, so these",
        "figures are optimistic; the final-epoch table above involves no such choice.",
        "",
        "| run | best epoch | " + " | ".join(cols) + " | top-5 |",
        "|---" * (len(cols) + 3) + "|",
    ]
    for name, r in report["runs"].items():
        b = r["best_epoch"]
        vals = [b["groups"][g] for g in groups] + [b["top1"]]
        lines.append(
            f"| {name} | {b['epoch']} | "
            + " | ".join(_pct(v) for v in vals)
            + f" | {_pct(b['top5'])} |"
        )
    return lines


def blessing_table(blessings: dict) -> list[str]:
    """Each run's status and every threshold's value, bound and outcome."""
    if not blessings:
        return []
    lines = [
        "",
        BLESSING_TITLE,
        "",
        "A run is BLESSED when every threshold holds (TFX's Evaluator); only a blessed",
        "model is pushed. Accuracies as fractions; a change is the run's value minus",
        "the baseline run's.",
        "",
        "| run | status | threshold | outcome |",
        "|---|---|---|---|",
    ]
    for run, b in blessings.items():
        for name, r in b["thresholds"].items():
            outcome = {True: "pass", False: "FAIL", None: "skipped"}[r["passed"]]
            lines.append(f"| {run} | {b['status']} | {blessing.describe(name, r)} | {outcome} |")
        if not b["thresholds"]:
            lines.append(f"| {run} | {b['status']} | (no thresholds) | |")
    return lines


def run_section(name: str, r: dict) -> list[str]:
    """A run's per-class table, confusion matrix and training-loss summary."""
    t, best = r["test"], r["best_epoch"]
    best_col = f" accuracy at best epoch {best['epoch']} (%) |" if best else ""
    lines = [
        "",
        f"## Run `{name}`",
        "",
        "At the final epoch"
        + ("; the last column at the best epoch, selected on the test set." if best else "."),
        "",
        "| class | accuracy (%) | error | lambda * tau_c |" + best_col,
        "|---|---|---|---|" + ("---|" if best else ""),
    ]
    for c, (acc, s) in enumerate(zip(t["per_class"], r["strength"], strict=True)):
        err = None if acc is None or not np.isfinite(acc) else 1 - acc
        best_val = f" {_pct(best['per_class'][c])} |" if best else ""
        lines.append(f"| {c} | {_pct(acc)} | {_fmt(err)} | {s:.4g} |" + best_val)
    cm = t["confusion"]
    lines += [
        "",
        "Confusion matrix (rows = true class, columns = predicted class):",
        "",
        "| true \\ pred | " + " | ".join(str(c) for c in range(len(cm))) + " |",
        "|---" * (len(cm) + 1) + "|",
    ]
    lines += [f"| {c} | " + " | ".join(str(v) for v in row) + " |" for c, row in enumerate(cm)]
    ls = r.get("train_losses")
    if ls:
        lines += [
            "",
            "Training-set loss (cross-entropy vs the training label):",
            "",
            "| examples | n | mean | median |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {cat} | {s['n']} | {_fmt(s['mean'])} | {_fmt(s['median'])} |"
            for cat, s in ls.items()
        ]
    return lines


def tau_table(t: dict) -> list[str]:
    lines = [
        "",
        "## Estimated tau (from the pretrained model on held-out half B)",
        "",
        "The true noise rate is 1 - T[c, c] of the train split (manifest): how well",
        "the held-out error tracks it shows how well uncertainty was estimated.",
        "",
        "| class | held-out error | true noise rate | n (train) | tau |",
        "|---|---|---|---|---|",
    ]
    rows = zip(t["err"], t["true_noise_rate"], t["n"], t["tau"], strict=True)
    for c, (e, rate, n, tau) in enumerate(rows):
        lines.append(f"| {c} | {_fmt(e)} | {_fmt(rate)} | {n} | {_fmt(tau)} |")
    return lines


def figures(report: dict, which: str) -> list[str]:
    """The section of figure `which` (a key of evaluate.PLOTS), if it was drawn."""
    path = report.get("plots", {}).get(which)
    if path is None:
        return []
    if which == "error_vs_strength":
        title = "Per-class test error vs applied strength lambda * tau_c (paper Fig. 4)"
        return ["", f"## {title}", "", f"![per-class error vs strength]({path})"]
    if which == "train_loss_hist":
        return [
            "",
            "## Training-set losses: clean, noisy and rare examples (paper Fig. 1)",
            "",
            "noisy: training label != clean label; rare: a cut class, label clean;",
            f"clean: the rest. Rare classes: {report.get('rare_classes', [])}.",
            "",
            f"![training-set loss histograms]({path})",
        ]
    return ["", "## Training curves", "", f"![training curves]({path})"]


def markdown(report: dict, groups: list[str], blessings: dict | None = None) -> str:
    """report.md: the final- and best-epoch tables, the blessing of each run, then a
    section per run, tau, label-issue detection and the figures."""
    lines = final_epoch_table(report, groups) + best_epoch_table(report, groups)
    lines += blessing_table(blessings or {})
    lines += figures(report, "error_vs_strength")
    for name, r in report["runs"].items():
        lines += run_section(name, r)
    if "tau" in report:
        lines += tau_table(report["tau"])
    if "label_issue_detection" in report:
        lines += detection.markdown(report["label_issue_detection"])
    lines += figures(report, "train_loss_hist") + figures(report, "training_curves")
    return "\n".join(lines) + "\n"
