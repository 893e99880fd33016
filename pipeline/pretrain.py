"""Stage 2: split train into halves (stratified by noisy label) and fit ERM on half A.

Writes <workdir>/pretrain/: split.npz (ids of half_a and half_b), model.keras,
history.json, tensorboard/. An interrupted attempt resumes from the last completed
epoch (checkpoints in pretrain.partial/checkpoints/).
"""

from __future__ import annotations

import os

import numpy as np
from absl import logging

from pipeline import data, modeling, stage

NAME = "pretrain"


def split_halves(ids, labels, *, seed: int, stratified: bool = True):
    """Splits ids into two halves, per label when stratified.

    Args:
      ids: int [N] example ids; labels: int [N] (noisy) labels.

    Returns:
      (half_a, half_b): sorted int64 id arrays; within each label group half_a gets
      floor(n / 2) examples drawn with `seed`, half_b the rest.
    """
    ids = np.asarray(ids, dtype=np.int64)
    labels = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    groups = (
        [np.flatnonzero(labels == c) for c in np.unique(labels)]
        if stratified
        else [np.arange(len(ids))]
    )
    half_a = []
    for idx in groups:
        idx = idx[np.argsort(ids[idx], kind="stable")]  # independent of record order
        half_a.append(ids[rng.permutation(idx)[: len(idx) // 2]])
    a = np.sort(np.concatenate(half_a)) if half_a else np.zeros([0], np.int64)
    b = np.setdiff1d(ids, a)
    return a, b


def run(config, workdir: str) -> None:
    section = config.pretrain
    train = data.read_fit_labels(workdir)  # never the validation split
    half_a, half_b = split_halves(
        train["id"], train["label"], seed=config.seed, stratified=section.stratified
    )
    logging.info("Pretrain split: %d examples in half A, %d in half B", len(half_a), len(half_b))
    # resume: an interrupted attempt continues from its last checkpointed epoch.
    with stage.stage_output(workdir, NAME, config=section, resume=True) as out:
        np.savez(os.path.join(out, "split.npz"), half_a=half_a, half_b=half_b)
        if modeling.is_fitted(out):
            return
        ds = data.training_dataset(workdir, section, seed=config.seed, keep_ids=half_a)
        model = modeling.build_har_model(config, section, lam=0.0, seed=config.seed)
        modeling.compile_model(
            model, section, steps_per_epoch=modeling.steps_for(len(half_a), section.batch_size)
        )
        modeling.fit(model, ds, section, out_dir=out)


if __name__ == "__main__":
    from pipeline import cli

    cli.run_stage(NAME, run)
