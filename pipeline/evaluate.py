"""Stage 5: accuracy of every trained run on the clean test split.

Per run: overall accuracy, per-class accuracy, accuracy of each group named in
config.eval.groups, and the final training metrics. Writes report.json and report.md
(one row per run; columns = groups + overall), with the tau table when present.
"""

from __future__ import annotations

import os

import numpy as np

from pipeline import data, modeling, stage

NAME = "evaluate"


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


def markdown(report: dict, groups: list[str]) -> str:
    cols = [*groups, "overall"]
    lines = [
        "# Results on the clean test split",
        "",
        "Accuracy (%) at the final epoch of each run.",
        "",
        "| run | " + " | ".join(cols) + " |",
        "|---" * (len(cols) + 1) + "|",
    ]
    for name, r in report["runs"].items():
        vals = [r["test"]["groups"][g] for g in groups] + [r["test"]["overall"]]
        lines.append(f"| {name} | " + " | ".join(f"{100 * v:.1f}" for v in vals) + " |")
    if "tau" in report:
        t = report["tau"]
        lines += [
            "",
            "## Estimated tau (from the pretrained model on held-out half B)",
            "",
            "| class | held-out error | n (train) | tau |",
            "|---|---|---|---|",
        ]
        for c, (e, n, tau) in enumerate(zip(t["err"], t["n"], t["tau"], strict=True)):
            lines.append(f"| {c} | {e:.3f} | {n} | {tau:.3f} |")
    return "\n".join(lines) + "\n"


def run(config, workdir: str) -> None:
    section = config.eval
    train_dir = stage.require(workdir, "train")
    groups = {g: tuple(int(c) for c in classes) for g, classes in section.groups.items()}
    num_classes = config.data.num_classes
    for g, classes in groups.items():
        bad = [c for c in classes if not 0 <= c < num_classes]
        if bad:
            raise stage.PipelineError(
                f"eval group {g!r} names classes {bad} outside [0, {num_classes})"
            )
    report = {"runs": {}, "groups": {g: list(c) for g, c in groups.items()}}
    runs = sorted(d for d in os.listdir(train_dir) if os.path.isdir(os.path.join(train_dir, d)))
    # Keep the config's order of runs where possible.
    order = [r for r in config.train.runs.keys() if r in runs] + [
        r for r in runs if r not in config.train.runs
    ]
    for name in order:
        model = modeling.load_model(os.path.join(train_dir, name, "model.keras"))
        labels, preds = modeling.predict_classes(
            model, data.make_dataset(workdir, "test", batch_size=section.batch_size, training=False)
        )
        history = stage.read_json(os.path.join(train_dir, name, "history.json"))
        report["runs"][name] = {
            "lam": float(model.lam),
            "test": accuracies(labels, preds, num_classes, groups),
            "final_train": {k: v[-1] for k, v in history.items()},
        }
    if stage.is_complete(workdir, "estimate_tau"):
        report["tau"] = stage.read_json(
            os.path.join(stage.stage_dir(workdir, "estimate_tau"), "tau.json")
        )
    with stage.stage_output(workdir, NAME, config=section) as out:
        stage.write_json(os.path.join(out, "report.json"), report)
        with open(os.path.join(out, "report.md"), "w") as f:
            f.write(markdown(report, list(groups)))


if __name__ == "__main__":
    from pipeline import cli

    cli.run_stage(NAME, run)
