"""Stage 3: tau per class from the pretrained model's error on held-out half B.

err_c = error on half B against the noisy labels, n_c = training examples labelled c
(the train split less any validation split), tau_c = err_c^a / n_c^b normalized to max 1. Writes
<workdir>/estimate_tau/tau.json.
"""

from __future__ import annotations

import os

import numpy as np
from absl import logging

from har_tf import tau as tau_lib
from pipeline import data, modeling, stage

NAME = "estimate_tau"


def run(config, workdir: str) -> None:
    section = config.tau
    num_classes = config.data.num_classes
    pre = stage.require(workdir, "pretrain")
    half_b = np.load(os.path.join(pre, "split.npz"))["half_b"]
    train = data.read_fit_labels(workdir)  # n_c counts the records runs train on
    counts = np.bincount(train["label"], minlength=num_classes)

    model = modeling.load_model(os.path.join(pre, "model.keras"))
    ds = data.make_dataset(
        workdir, "train", batch_size=config.eval.batch_size, training=False, keep_ids=half_b
    )
    labels, preds = modeling.predict_classes(model, ds)
    errors, support = tau_lib.per_class_error(labels, preds, num_classes)
    try:
        tau = tau_lib.estimate_tau(
            errors,
            counts,
            uncertainty_exponent=section.uncertainty_exponent,
            density_exponent=section.density_exponent,
            error_floor=section.error_floor,
        )
    except ValueError as e:
        raise stage.PipelineError(f"cannot estimate tau: {e}") from e
    for c in range(num_classes):
        logging.info(
            "class %d: held-out %d, err %.3f, n %d, tau %.3f",
            c, support[c], errors[c], counts[c], tau[c],
        )  # fmt: skip
    with stage.stage_output(workdir, NAME, config=section) as out:
        stage.write_json(
            os.path.join(out, "tau.json"),
            {
                "tau": tau.tolist(),
                "err": errors.tolist(),
                "n": counts.tolist(),
                "held_out": support.tolist(),
                "uncertainty_exponent": section.uncertainty_exponent,
                "density_exponent": section.density_exponent,
                "error_floor": section.error_floor,
            },
        )


if __name__ == "__main__":
    from pipeline import cli

    cli.run_stage(NAME, run)
