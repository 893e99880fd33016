"""Stage 3: tau per class from the pretrained model's error on held-out half B.

err_c = error on half B against the noisy labels, n_c = training examples labelled c
(the train split less any validation split), tau_c = err_c^a / n_c^b normalized to
max 1. Writes <workdir>/estimate_tau/tau.json.

With config.tau.cross_fit, half A is also predicted, by the pretrain stage's model of
half B: err_c pools both halves (`har_tf.held_out.class_tau`), and cleanlab flags the
examples that look mislabelled, written to label_issues.csv (id, given_label,
predicted_label, label_quality, is_label_issue; `har_tf.label_issues`).
"""

from __future__ import annotations

import os

import numpy as np
from absl import logging

from har_tf import held_out, label_issues
from pipeline import pretrain
from pipeline.core import stage
from pipeline.data import datasets, detection
from pipeline.training import modeling

NAME = "estimate_tau"


def _predict(model, dataset):
    """(ids, labels, probabilities float64 [N, C]) over a with_meta dataset."""
    logits_of = modeling.forward(model)
    batches = modeling.run_batches(lambda x, y, meta: (meta["id"], y, logits_of(x)), dataset)
    ids, labels, logits = (np.concatenate(part) for part in zip(*batches, strict=True))
    return ids, labels, held_out.softmax(logits)


def run(config, workdir: str) -> None:
    section = config.tau
    cross_fit = bool(section.get("cross_fit", False))
    num_classes = config.data.num_classes
    pre = stage.require(workdir, "pretrain")
    split = np.load(os.path.join(pre, "split.npz"))
    train = datasets.read_fit_labels(workdir)  # n_c counts the records runs train on

    # (model, the half it did not train on): the authors' one split, then the reverse.
    directions = [(os.path.join(pre, "model.keras"), split["half_b"])]
    if cross_fit:
        try:
            label_issues.require_cleanlab()
        except ImportError as e:
            raise stage.PipelineError(f"config.tau.cross_fit: {e}") from e
        path = os.path.join(pre, pretrain.HALF_B, "model.keras")
        if not os.path.isfile(path):
            raise stage.PipelineError(
                f"config.tau.cross_fit is set but {path} is missing: rerun the pretrain "
                "stage with config.tau.cross_fit=True (--force)"
            )
        directions.append((path, split["half_a"]))
    parts = []
    for path, ids in directions:
        model = modeling.load_model(path)
        ds = datasets.make_dataset(
            workdir, "train", batch_size=config.eval.batch_size, training=False, keep_ids=ids,
            with_meta=True,
        )  # fmt: skip
        parts.append(_predict(model, ds))
    ids, labels, proba = (np.concatenate(p) for p in zip(*parts, strict=True))
    try:
        result = held_out.class_tau(
            train["label"],
            labels,
            np.argmax(proba, axis=1),
            num_classes,
            uncertainty_exponent=section.uncertainty_exponent,
            density_exponent=section.density_exponent,
            error_floor=section.error_floor,
        )
    except ValueError as e:
        raise stage.PipelineError(f"cannot estimate tau: {e}") from e
    errors, support, counts, tau = result.errors, result.held_out, result.counts, result.tau
    for c in range(num_classes):
        logging.info(
            "class %d: held-out %d, err %.3f, n %d, tau %.3f",
            c, support[c], errors[c], counts[c], tau[c],
        )  # fmt: skip
    report = {
        "tau": tau.tolist(),
        "err": errors.tolist(),
        "n": counts.tolist(),
        "held_out": support.tolist(),
        "uncertainty_exponent": section.uncertainty_exponent,
        "density_exponent": section.density_exponent,
        "error_floor": section.error_floor,
    }
    with stage.stage_output(workdir, NAME, config) as out:
        if cross_fit:
            order = np.argsort(ids, kind="stable")
            ids, labels, proba = ids[order], labels[order], proba[order]
            frame = label_issues.find_label_issues(labels, proba, ids=ids)
            frame.to_csv(os.path.join(out, detection.LABEL_ISSUES), index=False)
            report["cross_fit"] = True
            report["cleanlab_noise_rate"] = label_issues.noise_rates(labels, proba).tolist()
        stage.write_json(os.path.join(out, "tau.json"), report)


if __name__ == "__main__":
    from pipeline import cli

    cli.run_stage(NAME, run)
