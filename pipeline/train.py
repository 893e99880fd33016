"""Stage 4: train a fresh model per configured run (ERM, uniform, HAR) on all of train.

Writes <workdir>/train/<run>/model.keras, history.json and tensorboard/ for each run
of config.train.runs. With config.eval.per_epoch_test, every epoch also evaluates on
the test split (pipeline.training.epoch_eval: test_accuracy, test_top5, test_class_<c>_accuracy
in history.json), for the evaluate stage's best-epoch figure. With a validation split
(config.data.val_fraction) runs train without its records and log val_* metrics
against its noisy labels per epoch; config.eval.per_epoch_memorization adds fit_*
(the memorization diagnostic, un-augmented, on the stage's training records: every
run's, including the examples a run drops, so that every run is scored on the same
examples). An interrupted attempt
keeps the runs it finished and resumes the one it was in from its last completed epoch
(<run>/checkpoints/ in train.partial).

"none" runs are ERM with lambda 0 (no double backprop);
"uniform" uses tau = 1; "har" uses estimate_tau's tau.json. A run with drw=True
gets class-balanced loss weights from config.train.drw_start_epoch (HAR-DRW).
A run's `drop`, `labels` and `reweight` fields choose its training set and its class
weights (pipeline.training.training_set: cleanlab's filter and CleanLearning's
weights, and a benchmark's ceilings); such a run writes what it dropped (and the
weights) to <run>/training_set.json. HAR's tau is estimate_tau's whatever a run drops.
"""

from __future__ import annotations

import os

import numpy as np
from absl import logging

from har_tf.callbacks import DeferredReweighting

# REGULARIZERS: study_config reads it from here.
from pipeline.config_check import REGULARIZERS, validate_runs  # noqa: F401
from pipeline.core import stage
from pipeline.data import datasets
from pipeline.training import epoch_eval, modeling, multi_worker, training_set

NAME = "train"


def run(config, workdir: str) -> None:
    section = config.train
    validate_runs(section.runs, cross_fit=bool(config.tau.get("cross_fit", False)))
    tau = None
    if any(r.regularizer == "har" for r in section.runs.values()):
        tau = stage.read_json(os.path.join(stage.require(workdir, "estimate_tau"), "tau.json"))[
            "tau"
        ]
    # Without the validation split's records (pipeline.data.validation), if there is one.
    fit = datasets.read_fit_labels(workdir)
    keep_ids = datasets.fit_keep_ids(workdir)
    flagged = (
        training_set.flagged_ids(workdir) if training_set.needs_label_issues(section.runs) else ()
    )
    # resume: runs an interrupted attempt finished are kept, and the run it was in
    # continues from its last checkpointed epoch.
    # Several workers (strategy "multi_worker"): only the chief writes.
    worker = multi_worker.worker(section)
    with stage.stage_output(workdir, NAME, config, resume=True, worker=worker) as out:
        for name, run_cfg in section.runs.items():
            run_dir = os.path.join(out, name)
            if modeling.is_fitted(run_dir):
                logging.info("Run %r already trained in %s; keeping it.", name, run_dir)
                continue
            logging.info("Training run %r (%s, lam=%s)", name, run_cfg.regularizer, run_cfg.lam)
            if worker is None or worker.chief:
                os.makedirs(run_dir, exist_ok=True)
            lam = 0.0 if run_cfg.regularizer == "none" else run_cfg.lam
            run_ids, labels, label_key = keep_ids, fit["label"], "label"
            weights = None  # class weights from the first step (reweight)
            if not training_set.is_default(run_cfg):
                drop, kind = run_cfg.get("drop", "none"), run_cfg.get("labels", "noisy")
                chosen = training_set.select(fit, drop=drop, labels=kind, flagged_ids=flagged)
                run_ids, labels = chosen["id"], chosen["label"]
                label_key = "clean_label" if kind == "clean" else "label"
                summary = training_set.summary(fit, chosen["dropped"], drop=drop, labels=kind)
                if run_cfg.get("reweight", "none") == "noise_rate":
                    weights = _noise_rate_weights(workdir)
                    summary["class_weights"] = weights.tolist()
                if worker is None or worker.chief:
                    stage.write_json(os.path.join(run_dir, training_set.SUMMARY), summary)
                if not len(run_ids):
                    raise stage.PipelineError(f"run {name!r}: drop {drop!r} left no example")
            steps = modeling.steps_for(len(labels), section.batch_size)
            model = modeling.build_har_model(
                config,
                section,
                lam=lam,
                tau=tau if run_cfg.regularizer == "har" else None,
                seed=config.seed,
                reg_every=int(run_cfg.get("reg_every", 1)),
            )
            modeling.compile_model(model, section, steps_per_epoch=steps)
            if weights is not None:
                model.set_class_weights(weights.tolist())  # from the first step on
            ds = datasets.training_dataset(
                workdir, section, seed=config.seed, keep_ids=run_ids, label_key=label_key
            )
            callbacks = []
            if config.eval.per_epoch_test:
                # Before fit's EpochCheckpoint, so that the checkpointed history has it.
                callbacks.append(epoch_eval.monitor_for(config, workdir))
            # Validation (val_*) and memorization (fit_*) metrics, when configured. fit_*
            # covers keep_ids, not run_ids: a run that drops examples is scored on the
            # whole training set, the wrong labels it dropped included, as every run is.
            callbacks += epoch_eval.label_set_monitors(config, workdir, keep_ids)
            if run_cfg.drw:
                # Class-balanced weights from the labels this run trains on.
                counts = np.bincount(labels, minlength=config.data.num_classes)
                if counts.min() < 1:
                    raise stage.PipelineError(
                        f"run {name!r}: DRW needs every class among its training labels; "
                        f"class(es) {np.flatnonzero(counts < 1).tolist()} have none"
                    )
                callbacks.append(
                    DeferredReweighting(
                        counts, start_epoch=section.drw_start_epoch, beta=section.drw_beta
                    )
                )
            modeling.fit(model, ds, section, out_dir=run_dir, callbacks=callbacks)


def _noise_rate_weights(workdir: str) -> np.ndarray:
    """CleanLearning's class weights from estimate_tau's cleanlab noise rates."""
    path = os.path.join(stage.require(workdir, "estimate_tau"), "tau.json")
    rates = stage.read_json(path).get("cleanlab_noise_rate")
    if rates is None:
        raise stage.PipelineError(
            f"{path} has no cleanlab_noise_rate: a run with reweight 'noise_rate' needs "
            "estimate_tau run with config.tau.cross_fit=True (rerun it with --force)"
        )
    return training_set.noise_rate_weights(rates)


if __name__ == "__main__":
    from pipeline import cli

    cli.run_stage(NAME, run)
