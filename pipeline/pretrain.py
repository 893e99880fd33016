"""Stage 2: split train into halves (stratified by noisy label) and fit ERM on half A.

Writes <workdir>/pretrain/: split.npz (ids of half_a and half_b), model.keras,
history.json, tensorboard/. An interrupted attempt resumes from the last completed
epoch (checkpoints in pretrain.partial/checkpoints/). With config.tau.cross_fit it
also fits ERM on half B, into <workdir>/pretrain/half_b/ (the same files).
"""

from __future__ import annotations

import os

import numpy as np
from absl import logging

from har_tf.held_out import split_halves
from pipeline.core import stage
from pipeline.data import datasets
from pipeline.training import modeling, multi_worker

NAME = "pretrain"
# With config.tau.cross_fit: the model of half B (it predicts half A in estimate_tau).
HALF_B = "half_b"


def run(config, workdir: str) -> None:
    section = config.pretrain
    train = datasets.read_fit_labels(workdir)  # never the validation split
    half_a, half_b = split_halves(
        train["id"], train["label"], seed=config.seed, stratified=section.stratified
    )
    logging.info("Pretrain split: %d examples in half A, %d in half B", len(half_a), len(half_b))
    # resume: an interrupted attempt continues from its last checkpointed epoch.
    # Several workers (strategy "multi_worker"): only the chief writes.
    worker = multi_worker.worker(section)
    writes = worker is None or worker.chief
    with stage.stage_output(workdir, NAME, config, resume=True, worker=worker) as out:
        if writes:
            np.savez(os.path.join(out, "split.npz"), half_a=half_a, half_b=half_b)
        _fit_half(config, workdir, out, half_a, writes=writes)
        if config.tau.get("cross_fit", False):
            _fit_half(config, workdir, os.path.join(out, HALF_B), half_b, writes=writes)


def _fit_half(config, workdir: str, out: str, keep_ids, *, writes: bool) -> None:
    """ERM on the train records with these ids, into `out` (resumed if unfinished);
    `writes`: whether this process writes (False on a multi-worker stage's non-chief)."""
    section = config.pretrain
    if writes:
        os.makedirs(out, exist_ok=True)
    if modeling.is_fitted(out):
        return
    ds = datasets.training_dataset(workdir, section, seed=config.seed, keep_ids=keep_ids)
    model = modeling.build_har_model(config, section, lam=0.0, seed=config.seed)
    modeling.compile_model(
        model, section, steps_per_epoch=modeling.steps_for(len(keep_ids), section.batch_size)
    )
    modeling.fit(model, ds, section, out_dir=out)


if __name__ == "__main__":
    from pipeline import cli

    cli.run_stage(NAME, run)
