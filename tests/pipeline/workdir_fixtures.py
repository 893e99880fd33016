"""A tiny completed workdir for the evaluate / export tests: preprocess on generated
IDX data, then untrained (seeded) models written as the train stage would."""

from __future__ import annotations

import json
import os

import numpy as np

from configs import fashion_mnist_hetero
from pipeline import preprocess
from pipeline.core import stage
from pipeline.training import epoch_eval, modeling
from tests.pipeline import idx_fixtures

TAU = np.linspace(0.1, 1.0, 10)
# Per-epoch test metrics of both runs, as the train stage's TestSetMonitor records
# them (known numbers for evaluate's best epoch): epoch 1 of 2 has the higher
# test_accuracy, so the best epoch is not the last.
TEST_HISTORY = {
    epoch_eval.TEST_ACCURACY: [0.6, 0.4],
    epoch_eval.TEST_TOP5: [0.9, 0.8],
    **{epoch_eval.class_accuracy_key(c): [c / 10, 1 - c / 10] for c in range(10)},
}


def tiny_config(idx_dir: str):
    config = fashion_mnist_hetero.get_config("smoke")
    config.data.data_dir = str(idx_dir)
    config.data.limit_train = 600
    config.data.limit_test = 100
    return config


def make_workdir(idx_dir: str, workdir: str, *, with_tau: bool = True):
    """Writes IDX data into idx_dir, then the preprocess, estimate_tau (a fixed tau)
    and train stages into workdir; returns the config."""
    idx_fixtures.write_dataset(idx_dir, num_train=600, num_test=100)
    config = tiny_config(idx_dir)
    preprocess.run(config, workdir)
    if with_tau:
        with stage.stage_output(workdir, "estimate_tau") as out:
            stage.write_json(
                os.path.join(out, "tau.json"),
                {"tau": TAU.tolist(), "err": [0.2] * 10, "n": [60] * 10, "held_out": [30] * 10},
            )
    with stage.stage_output(workdir, "train") as out:
        for name, lam in (("erm", 0.0), ("har", 10.0)):
            model = modeling.build_har_model(
                config, config.train, lam=lam, tau=TAU if lam else None, seed=0
            )
            os.makedirs(os.path.join(out, name))
            model.save(os.path.join(out, name, "model.keras"))
            with open(os.path.join(out, name, "history.json"), "w") as f:
                json.dump({"loss": [2.3, 2.0], "reg": [lam / 10, lam / 20], **TEST_HISTORY}, f)
    return config
