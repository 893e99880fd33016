"""Stage 5: evaluation of every trained run on the clean test split.

Per run, at the final epoch: top-1 and top-5 accuracy, per-class accuracy, accuracy of
each group named in config.eval.groups, the confusion matrix (rows = true class), the
applied strength lambda * tau_c per class, per-example training-set losses by category
(clean / noisy / rare) and the final training metrics. At the best epoch (highest test
accuracy, from the per-epoch test metrics the train stage records with
config.eval.per_epoch_test): top-1, top-5, per-class and group accuracy. That epoch is
selected on the test set, as the authors report, so it is an optimistic figure; the
report labels it so, beside the final-epoch one. Beside the estimated tau it
shows each class's TRUE noise rate from the manifest (1 - T[c, c] of the train split).
With config.tau.cross_fit, the precision, recall and AUROC of estimate_tau's label
issues against the clean labels (pipeline/data/detection.py).

Each run is judged against config.eval.thresholds (pipeline/evaluation/blessing.py, TFX's
Evaluator blessing): BLESSED or NOT_BLESSED, with every threshold's value, bound and
outcome. The push stage ships the exported run only if it is blessed.

Writes <workdir>/evaluate/: report.json, report.md (tables, with the PNG figures
embedded by relative path; pipeline/evaluation/report.py), <run>/blessing.json per run,
error_vs_strength.png (paper Fig. 4), train_loss_hist.png (paper Fig. 1) and
training_curves.png.
"""

from __future__ import annotations

import os

import numpy as np

from pipeline.config_check import eval_groups
from pipeline.core import stage
from pipeline.data import datasets, detection
from pipeline.evaluation import blessing, plots
from pipeline.evaluation import report as evaluate_report
from pipeline.training import epoch_eval, modeling

NAME = "evaluate"
TOP_K = epoch_eval.TOP_K  # the same k per epoch (train stage) and here
SELECTED_ON = "test set"
PLOTS = {
    "error_vs_strength": "error_vs_strength.png",
    "train_loss_hist": "train_loss_hist.png",
    "training_curves": "training_curves.png",
}
CATEGORIES = ("clean", "noisy", "rare")


# ----------------------------------------------------------------------------------
# Pure metrics (numpy in, numbers out)


def accuracies(labels, preds, num_classes: int, groups: dict) -> dict:
    """Overall, per-class and per-group accuracy; group accuracy is the mean over
    examples of the group's classes (== mean of per-class accuracies on a balanced
    test set)."""
    labels = np.asarray(labels)
    preds = np.asarray(preds)
    correct = labels == preds
    per_class = [
        float(correct[labels == c].mean()) if np.any(labels == c) else float("nan")
        for c in range(num_classes)
    ]
    group_acc = {}
    for g, classes in groups.items():
        mask = np.isin(labels, list(classes))
        group_acc[g] = float(correct[mask].mean()) if mask.any() else float("nan")
    return {
        "overall": float(correct.mean()) if len(correct) else float("nan"),
        "per_class": per_class,
        "groups": group_acc,
        "num_examples": int(len(labels)),
    }


def top_k_accuracy(labels, scores, k: int) -> float:
    """Fraction of examples whose label is among the k highest scores (k capped at C).

    Ties are broken by class index (lower first), like np.argsort(-scores, stable).
    """
    labels = np.asarray(labels)
    scores = np.asarray(scores)
    if len(labels) == 0:
        return float("nan")
    k = min(int(k), scores.shape[-1])
    top = np.argsort(-scores, axis=-1, kind="stable")[:, :k]
    return float(np.mean(np.any(top == labels[:, None], axis=-1)))


def confusion_matrix(labels, preds, num_classes: int) -> np.ndarray:
    """int64 [C, C]: entry [t, p] counts examples of true class t predicted as p."""
    labels = np.asarray(labels, np.int64)
    preds = np.asarray(preds, np.int64)
    return np.bincount(labels * num_classes + preds, minlength=num_classes**2).reshape(
        num_classes, num_classes
    )


def best_epoch(history: dict, class_counts, groups: dict) -> dict:
    """The epoch of highest test accuracy (the first on ties; among the evaluated
    epochs) and its figures.

    Selection on the test set, which is what the authors report: an optimistic figure,
    labelled as such by `selected_on`.

    Args:
      history: a run's history.json with the per-epoch test metrics of
        pipeline.training.epoch_eval (`test_accuracy`, `test_top5`, `test_class_<c>_accuracy`).
      class_counts: [C] test examples per class.
      groups: group name -> classes.

    Returns:
      {"epoch": 1-based, "selected_on", "top1", "top5", "per_class": [C] (nan for a
      class without test examples), "groups": accuracy over the group's test
      examples, i.e. its class accuracies weighted by the test class counts, as
      `accuracies` computes it at the final epoch}.
    """
    counts = np.asarray(class_counts, np.int64)
    num_classes = len(counts)
    # Epochs without a test pass (config.eval.per_epoch_every > 1) are None: skipped.
    tested = [-np.inf if v is None else v for v in history[epoch_eval.TEST_ACCURACY]]
    k = int(np.argmax(tested))
    per_class = []
    for c in range(num_classes):
        key = epoch_eval.class_accuracy_key(c)
        if counts[c] and key not in history:
            raise stage.PipelineError(
                f"class {c} has {counts[c]} test examples but the history has no {key!r}"
            )
        per_class.append(float(history[key][k]) if counts[c] else float("nan"))
    acc = np.where(counts > 0, per_class, 0.0)
    group_acc = {}
    for g, classes in groups.items():
        n = counts[list(classes)].sum()
        group_acc[g] = float(acc[list(classes)] @ counts[list(classes)] / n) if n else float("nan")
    return {
        "epoch": k + 1,
        "selected_on": SELECTED_ON,
        "top1": float(history[epoch_eval.TEST_ACCURACY][k]),
        # With k >= C every label is in the top k (top_k_accuracy caps k likewise).
        # With C <= 5 every label is in the top 5: no figure rather than a vacuous 100%.
        "top5": float(history[epoch_eval.TEST_TOP5][k]) if num_classes > TOP_K else None,
        "per_class": per_class,
        "groups": group_acc,
    }


def true_noise_rates(manifest: dict) -> list[float]:
    """Per clean class c, the train split's fraction relabelled: 1 - T[c, c]."""
    rates = np.asarray(manifest["splits"]["train"]["transition_rates"], float)
    return (1.0 - np.diag(rates)).tolist()


def rare_classes(imbalance: dict, num_classes: int) -> list[int]:
    """Classes the imbalance cut made rare: a step cut's `classes`; for other kinds,
    the classes whose target count is below the largest target."""
    kind = imbalance.get("kind", "none")
    if kind == "none":
        return []
    if kind == "step":
        return sorted(int(c) for c in imbalance.get("classes", ()))
    targets = imbalance.get("targets")
    if not targets:
        return []
    targets = np.asarray(targets, float)
    return [c for c in range(num_classes) if targets[c] < targets.max()]


def example_categories(labels, clean_labels, rare: list[int], *, by: str = "noisy") -> np.ndarray:
    """Per example, one of CATEGORIES (mutually exclusive): "noisy" if the training
    label differs from the clean one; else "rare" if its class (the `by` label, as the
    cut used) is a rare class; else "clean"."""
    labels = np.asarray(labels)
    clean_labels = np.asarray(clean_labels)
    cut_label = clean_labels if by == "clean" else labels
    out = np.full(len(labels), "clean", dtype=object)
    out[np.isin(cut_label, rare)] = "rare"
    out[labels != clean_labels] = "noisy"
    return out


def cross_entropy(logits, labels) -> np.ndarray:
    """Per-example softmax cross-entropy, float64 [N], stable for large logits."""
    logits = np.asarray(logits, np.float64)
    labels = np.asarray(labels, np.int64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_z = np.log(np.exp(shifted).sum(axis=-1))
    return log_z - shifted[np.arange(len(labels)), labels]


def loss_summary(losses, categories) -> dict:
    """Count, mean and median loss per category."""
    losses = np.asarray(losses, float)
    out = {}
    for cat in CATEGORIES:
        sel = losses[np.asarray(categories) == cat]
        out[cat] = {
            "n": int(len(sel)),
            "mean": float(sel.mean()) if len(sel) else float("nan"),
            "median": float(np.median(sel)) if len(sel) else float("nan"),
        }
    return out


# ----------------------------------------------------------------------------------
# Model passes


def _logits(forward, dataset, *, with_meta: bool = False):
    """(logits float32 [N, C], labels [N], clean labels [N] or None) over a dataset;
    `forward` maps an image batch to logits."""
    outputs = modeling.run_batches(
        lambda x, y, *meta: (forward(x), y, meta[0]["clean_label"] if with_meta else y), dataset
    )
    if not outputs:
        raise stage.PipelineError("the dataset to evaluate on is empty")
    logits, labels, clean = (np.concatenate(column) for column in zip(*outputs, strict=True))
    return logits.astype(np.float32), labels, clean if with_meta else None


def run_metrics(config, workdir: str, name: str, *, groups: dict, rare: list, by: str):
    """One run's report.json entry, and its training-set losses per category (for the
    loss histograms) and history (for the training curves)."""
    section, num_classes = config.eval, config.data.num_classes
    run_dir = os.path.join(stage.stage_dir(workdir, "train"), name)
    model = modeling.load_model(os.path.join(run_dir, "model.keras"))
    forward = modeling.forward(model)
    test_ds = datasets.make_dataset(workdir, "test", batch_size=section.batch_size, training=False)
    logits, labels, _ = _logits(forward, test_ds)
    preds = np.argmax(logits, axis=-1)
    test = accuracies(labels, preds, num_classes, groups)
    test["top5"] = top_k_accuracy(labels, logits, TOP_K) if num_classes > TOP_K else None
    test["confusion"] = confusion_matrix(labels, preds, num_classes).tolist()
    train_ds = datasets.make_dataset(
        workdir, "train", batch_size=section.batch_size, training=False, with_meta=True
    )
    train_logits, train_labels, train_clean = _logits(forward, train_ds, with_meta=True)
    losses = cross_entropy(train_logits, train_labels)
    cats = example_categories(train_labels, train_clean, rare, by=by)
    history_path = os.path.join(run_dir, "history.json")
    history = stage.read_json(history_path)
    best = None
    if section.per_epoch_test:
        if not history.get(epoch_eval.TEST_ACCURACY):
            raise stage.PipelineError(
                f"{history_path} has no per-epoch test accuracy "
                f"({epoch_eval.TEST_ACCURACY!r}) although config.eval.per_epoch_test is "
                "True; rerun the train stage (--force) to record it"
            )
        best = best_epoch(history, np.bincount(labels, minlength=num_classes), groups)
    lam = float(model.lam)
    tau = np.asarray(model.tau.numpy(), float) if lam > 0 else np.zeros(num_classes)
    entry = {
        "lam": lam,
        "tau": tau.tolist(),
        "strength": (lam * tau).tolist(),
        "test": test,
        "train_losses": loss_summary(losses, cats),
        "final_train": {
            k: v[-1] for k, v in history.items() if v and not k.startswith(epoch_eval.PREFIX)
        },
        "best_epoch": best,
    }
    return entry, {c: losses[cats == c] for c in CATEGORIES}, history


def write_outputs(out: str, report: dict, groups: list, losses_by_run, histories, blessings):
    """The plots, report.json, each run's blessing.json and report.md, under `out`."""
    plots.error_vs_strength(
        {
            n: {"strength": r["strength"], "error": [1 - a for a in r["test"]["per_class"]]}
            for n, r in report["runs"].items()
        },
        os.path.join(out, PLOTS["error_vs_strength"]),
    )
    plots.loss_histograms(losses_by_run, os.path.join(out, PLOTS["train_loss_hist"]))
    # Per-class test accuracies are in the tables: a panel each would be too many.
    plots.training_curves(
        {
            n: {k: v for k, v in h.items() if not epoch_eval.is_class_key(k)}
            for n, h in histories.items()
        },
        os.path.join(out, PLOTS["training_curves"]),
    )
    report["plots"] = dict(PLOTS)
    stage.write_json(os.path.join(out, "report.json"), report)
    for name, b in blessings.items():
        os.makedirs(os.path.dirname(blessing.path(out, name)), exist_ok=True)
        stage.write_json(blessing.path(out, name), b)
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write(evaluate_report.markdown(report, groups, blessings))


def run(config, workdir: str) -> None:
    train_dir = stage.require(workdir, "train")
    groups = eval_groups(config)
    specs = blessing.thresholds(config)
    manifest = datasets.load_manifest(workdir)
    imbalance = manifest.get("imbalance", {})
    rare = rare_classes(imbalance, config.data.num_classes)
    report = {
        "runs": {},
        "groups": {g: list(c) for g, c in groups.items()},
        "rare_classes": rare,
        "true_noise_rate": true_noise_rates(manifest),
        # Whether each run's "best_epoch" is given (else None): see best_epoch().
        "per_epoch_test": bool(config.eval.per_epoch_test),
    }
    runs = sorted(d for d in os.listdir(train_dir) if os.path.isdir(os.path.join(train_dir, d)))
    # Keep the config's order of runs where possible.
    order = [r for r in config.train.runs.keys() if r in runs] + [
        r for r in runs if r not in config.train.runs
    ]
    missing = sorted({s["baseline"] for s in specs.values() if "baseline" in s} - set(runs))
    if missing:
        raise stage.PipelineError(
            f"the thresholds' baseline run(s) {missing} were not trained in {train_dir}"
        )
    histories, losses_by_run = {}, {}
    for name in order:
        report["runs"][name], losses_by_run[name], histories[name] = run_metrics(
            config, workdir, name, groups=groups, rare=rare, by=imbalance.get("by", "noisy")
        )
    tests = {n: r["test"] for n, r in report["runs"].items()}
    blessings = {n: blessing.judge(n, tests, specs) for n in order}
    if stage.is_complete(workdir, "estimate_tau"):
        report["tau"] = stage.read_json(
            os.path.join(stage.stage_dir(workdir, "estimate_tau"), "tau.json")
        )
        report["tau"]["true_noise_rate"] = report["true_noise_rate"]
    # config.tau.cross_fit: how well estimate_tau's label issues find the flipped labels.
    det = detection.read(workdir, config.data.num_classes)
    if det is not None:
        report["label_issue_detection"] = det
    with stage.stage_output(workdir, NAME, config) as out:
        write_outputs(out, report, list(groups), losses_by_run, histories, blessings)
    for name, b in blessings.items():
        print(f"== blessing of run {name}: {b['status']}")
        for line in blessing.failures(b):
            print(f"   failed: {line}")


if __name__ == "__main__":
    from pipeline import cli

    cli.run_stage(NAME, run)
