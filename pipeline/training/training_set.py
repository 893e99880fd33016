"""Which records a training run trains on, and against which labels.

A run of config.train.runs trains, by default, on every train record outside the
validation split, against its noisy labels: what a user has. Two run fields change
that, for label cleaning and for the ceilings a benchmark (which knows the clean
labels) can measure:

  drop    "none"          every record
          "label_issues"  without the records cleanlab flagged in estimate_tau's
                          label_issues.csv (config.tau.cross_fit: out-of-sample
                          probabilities of the two pretrain halves, then cleanlab's
                          find_label_issues), then trains on the rest: cleanlab's
                          CleanLearning recipe ("cl_filter")
          "wrong_labels"  without every record whose noisy label differs from its
                          clean label: the oracle filter (a ceiling; needs the
                          clean labels, which only a benchmark has)
  labels  "noisy"         the given labels
          "clean"         the clean labels of the same records (a ceiling)
  reweight "none"         every kept example weighs the same
          "noise_rate"    CleanLearning's final fit: each kept example weighs
                          1 / max(1 - r_k, 1e-3), r_k cleanlab's noise rate of its
                          given label k (estimate_tau's tau.json, from the same
                          cross-fitted probabilities), so that a class keeps its apparent
                          number of examples after the drop; applied as class weights
                          with the weighted-mean semantics of DRW (HARModel.set_class_weights)

`select` is the pure rule; `summary` counts what a drop removed against the known
flips (precision and recall of the drop), written beside each run.
"""

from __future__ import annotations

import os

import numpy as np

from pipeline.core import stage
from pipeline.data import detection

DROPS = ("none", "label_issues", "wrong_labels")
LABELS = ("noisy", "clean")
REWEIGHTS = ("none", "noise_rate")
WEIGHT_FLOOR = 1e-3  # cleanlab's clip of 1 - r_k (CleanLearning.fit)
SUMMARY = "training_set.json"


def check_run(name: str, run_cfg, *, cross_fit: bool) -> None:
    """A run's `drop` and `labels` fields, or a PipelineError naming the run."""
    drop, labels = run_cfg.get("drop", "none"), run_cfg.get("labels", "noisy")
    if drop not in DROPS:
        raise stage.PipelineError(f"run {name!r}: drop {drop!r} is not one of {DROPS}")
    if labels not in LABELS:
        raise stage.PipelineError(f"run {name!r}: labels {labels!r} is not one of {LABELS}")
    reweight = run_cfg.get("reweight", "none")
    if reweight not in REWEIGHTS:
        raise stage.PipelineError(f"run {name!r}: reweight {reweight!r} is not one of {REWEIGHTS}")
    # What each value reads from estimate_tau's cross-fitted pretraining.
    needs = {"label_issues": "the label issues", "noise_rate": "cleanlab's noise rates"}
    for field, value in (("drop", drop), ("reweight", reweight)):
        if value in needs and not cross_fit:
            raise stage.PipelineError(
                f"run {name!r}: {field} {value!r} needs {needs[value]} of cross-fitted "
                "pretraining: set config.tau.cross_fit=True"
            )
    if reweight != "none" and run_cfg.get("drw", False):
        raise stage.PipelineError(
            f"run {name!r}: reweight {reweight!r} and drw both set the class weights; choose one"
        )


def is_default(run_cfg) -> bool:
    """Whether the run trains on every fit record against its noisy labels, unweighted."""
    return (
        run_cfg.get("drop", "none") == "none"
        and run_cfg.get("labels", "noisy") == "noisy"
        and run_cfg.get("reweight", "none") == "none"
    )


def noise_rate_weights(noise_rates) -> np.ndarray:
    """CleanLearning's per-class weights for the final fit: 1 / max(1 - r_k, 1e-3)."""
    rates = np.asarray(noise_rates, np.float64)
    if rates.ndim != 1 or not np.all(np.isfinite(rates)):
        raise stage.PipelineError(f"noise rates must be a finite [C] list, got {noise_rates!r}")
    return 1.0 / np.maximum(1.0 - rates, WEIGHT_FLOOR)


def needs_label_issues(runs) -> bool:
    return any(r.get("drop", "none") == "label_issues" for r in runs.values())


def select(fit: dict, *, drop: str, labels: str, flagged_ids=()) -> dict:
    """The run's training set from the fit records.

    Args:
      fit: "id", "label" (noisy), "clean_label": int arrays of the records outside
        the validation split (pipeline.data.datasets.read_fit_labels).
      drop, labels: the run's fields (module docstring).
      flagged_ids: ids cleanlab flagged (drop "label_issues").

    Returns:
      {"id": kept ids, "label": the labels the run trains on, "dropped": bool mask
      over `fit`}.
    """
    ids = np.asarray(fit["id"])
    if drop == "none":
        dropped = np.zeros(len(ids), bool)
    elif drop == "label_issues":
        dropped = np.isin(ids, np.asarray(flagged_ids, dtype=ids.dtype))
    elif drop == "wrong_labels":
        dropped = np.asarray(fit["label"]) != np.asarray(fit["clean_label"])
    else:
        raise ValueError(f"unknown drop {drop!r}")
    if labels not in LABELS:
        raise ValueError(f"unknown labels {labels!r}")
    source = fit["label"] if labels == "noisy" else fit["clean_label"]
    keep = ~dropped
    return {"id": ids[keep], "label": np.asarray(source)[keep], "dropped": dropped}


def summary(fit: dict, dropped: np.ndarray, *, drop: str, labels: str) -> dict:
    """What a drop removed, scored against the known flips (noisy != clean label).

    precision: the share of dropped records that were wrongly labelled (None when
    nothing was dropped); recall: the share of the wrongly-labelled records that were
    dropped (None when there is none). Per noisy label too.
    """
    wrong = np.asarray(fit["label"]) != np.asarray(fit["clean_label"])
    dropped = np.asarray(dropped, bool)
    hits = int((wrong & dropped).sum())

    def ratio(a: int, b: int):
        return a / b if b else None

    labels_arr = np.asarray(fit["label"])
    classes = sorted(int(c) for c in np.unique(labels_arr))
    return {
        "drop": drop,
        "labels": labels,
        "records": int(len(dropped)),
        "kept": int((~dropped).sum()),
        "dropped": int(dropped.sum()),
        "wrongly_labelled": int(wrong.sum()),
        "dropped_wrongly_labelled": hits,
        "precision": ratio(hits, int(dropped.sum())),
        "recall": ratio(hits, int(wrong.sum())),
        "per_noisy_label": {
            str(c): {
                "records": int((labels_arr == c).sum()),
                "dropped": int((dropped & (labels_arr == c)).sum()),
                "wrongly_labelled": int((wrong & (labels_arr == c)).sum()),
                "dropped_wrongly_labelled": int((wrong & dropped & (labels_arr == c)).sum()),
            }
            for c in classes
        },
    }


def flagged_ids(workdir: str) -> np.ndarray:
    """The ids estimate_tau's label_issues.csv flags (is_label_issue)."""
    path = os.path.join(stage.require(workdir, "estimate_tau"), detection.LABEL_ISSUES)
    if not os.path.isfile(path):
        raise stage.PipelineError(
            f"{path} is missing: a run with drop 'label_issues' needs estimate_tau run "
            "with config.tau.cross_fit=True (rerun it with --force)"
        )
    import pandas as pd  # with cleanlab (the label-issues extra)

    frame = pd.read_csv(path)
    missing = {"id", "is_label_issue"} - set(frame.columns)
    if missing:
        raise stage.PipelineError(f"{path} lacks the column(s) {sorted(missing)}")
    return frame.loc[frame["is_label_issue"].astype(bool), "id"].to_numpy(np.int64)
