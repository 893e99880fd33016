"""Which records a run trains on (pipeline.training.training_set): the rule against hand-built
cases, and the train stage's wiring against the records themselves."""

import os

import numpy as np
import pandas as pd
import pytest

from har_tf.callbacks import DeferredReweighting
from pipeline import preprocess, train
from pipeline.core import stage
from pipeline.data import datasets, detection
from pipeline.training import modeling, training_set
from tests.pipeline import idx_fixtures
from tests.pipeline.workdir_fixtures import tiny_config

FIT = {
    "id": np.array([10, 11, 12, 13, 14, 15]),
    "label": np.array([0, 0, 1, 1, 2, 2]),
    "clean_label": np.array([0, 1, 1, 0, 2, 2]),  # ids 11 and 13 are flipped
}


def test_select_and_summary_against_hand_counts():
    none = training_set.select(FIT, drop="none", labels="noisy")
    assert none["id"].tolist() == [10, 11, 12, 13, 14, 15]
    assert none["label"].tolist() == [0, 0, 1, 1, 2, 2]

    clean = training_set.select(FIT, drop="none", labels="clean")
    assert clean["label"].tolist() == [0, 1, 1, 0, 2, 2] and not clean["dropped"].any()

    oracle = training_set.select(FIT, drop="wrong_labels", labels="noisy")
    assert oracle["id"].tolist() == [10, 12, 14, 15]
    assert oracle["label"].tolist() == [0, 1, 2, 2]

    # cleanlab flagged 11 (a flip) and 14 (clean), and an id not in the fit set.
    cl = training_set.select(FIT, drop="label_issues", labels="noisy", flagged_ids=[11, 14, 99])
    assert cl["id"].tolist() == [10, 12, 13, 15]
    s = training_set.summary(FIT, cl["dropped"], drop="label_issues", labels="noisy")
    assert (s["records"], s["kept"], s["dropped"]) == (6, 4, 2)
    assert (s["wrongly_labelled"], s["dropped_wrongly_labelled"]) == (2, 1)
    assert s["precision"] == 0.5 and s["recall"] == 0.5
    assert s["per_noisy_label"]["0"] == {
        "records": 2, "dropped": 1, "wrongly_labelled": 1, "dropped_wrongly_labelled": 1,
    }  # fmt: skip
    assert s["per_noisy_label"]["2"]["dropped_wrongly_labelled"] == 0

    nothing = training_set.summary(FIT, none["dropped"], drop="none", labels="clean")
    assert nothing["precision"] is None and nothing["recall"] == 0.0


def test_check_run_names_the_bad_field():
    with pytest.raises(stage.PipelineError, match="run 'a': drop 'all' is not one of"):
        training_set.check_run("a", {"drop": "all"}, cross_fit=True)
    with pytest.raises(stage.PipelineError, match="run 'a': labels 'true' is not one of"):
        training_set.check_run("a", {"labels": "true"}, cross_fit=True)
    with pytest.raises(stage.PipelineError, match="set config.tau.cross_fit=True"):
        training_set.check_run("a", {"drop": "label_issues"}, cross_fit=False)
    training_set.check_run("a", {"drop": "label_issues"}, cross_fit=True)
    with pytest.raises(stage.PipelineError, match="run 'a': reweight 'class' is not one of"):
        training_set.check_run("a", {"reweight": "class"}, cross_fit=True)
    with pytest.raises(stage.PipelineError, match="noise rates of cross-fitted pretraining"):
        training_set.check_run("a", {"reweight": "noise_rate"}, cross_fit=False)
    with pytest.raises(stage.PipelineError, match="reweight 'noise_rate' and drw both"):
        training_set.check_run("a", {"reweight": "noise_rate", "drw": True}, cross_fit=True)
    assert not training_set.is_default({"reweight": "noise_rate"})
    assert training_set.is_default({"reweight": "none", "drop": "none"})


def test_noise_rate_weights_are_cleanlabs_clipped_inverse_diagonal():
    # 1 / max(1 - r, 1e-3): r = 0.4 -> 1/0.6; 0 -> 1; 1 (every label wrong) -> the clip.
    got = training_set.noise_rate_weights([0.4, 0.0, 0.75, 1.0])
    assert got == pytest.approx([1 / 0.6, 1.0, 4.0, 1000.0])
    with pytest.raises(stage.PipelineError, match="noise rates must be a finite"):
        training_set.noise_rate_weights([0.1, float("nan")])


def test_make_dataset_refuses_an_unknown_label_key(tmp_path):
    with pytest.raises(ValueError, match="label_key must be"):
        datasets.make_dataset(str(tmp_path), "train", batch_size=4, training=False, label_key="y")


RATES = [0.4, 0.0, 0.5, 0.1, 0.75, 0.0, 0.2, 0.0, 0.0, 0.0]  # estimate_tau's, by hand


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A preprocessed tiny workdir (10% validation) with an estimate_tau stage whose
    label_issues.csv flags every 7th fit record, and the fit records' labels."""
    root = tmp_path_factory.mktemp("ts")
    idx_fixtures.write_dataset(root / "idx", num_train=400, num_test=50)
    config = tiny_config(root / "idx")
    config.data.val_fraction = 0.1
    config.tau.cross_fit = True
    workdir = str(root / "w")
    preprocess.run(config, workdir)
    fit = datasets.read_fit_labels(workdir)
    flagged = fit["id"][::7]
    with stage.stage_output(workdir, "estimate_tau") as out:
        stage.write_json(
            os.path.join(out, "tau.json"), {"tau": [1.0] * 10, "cleanlab_noise_rate": RATES}
        )
        pd.DataFrame(
            {
                "id": fit["id"],
                "given_label": fit["label"],
                "predicted_label": fit["label"],
                "label_quality": 0.5,
                "is_label_issue": np.isin(fit["id"], flagged),
            }
        ).to_csv(os.path.join(out, detection.LABEL_ISSUES), index=False)
    return config, workdir, fit, flagged


def test_train_stage_trains_each_run_on_its_own_records_and_labels(workdir, monkeypatch):
    """The datasets the train stage hands to fit, read to the end, hold exactly the
    expected labels (computed here from the records), and DRW weighs the classes of
    the labels the run trains on."""
    config, wd, fit, flagged = workdir
    config = config.copy_and_resolve_references()
    config.train.augment = False
    config.train.runs = {
        "clean": dict(regularizer="none", lam=0.0, drw=False, reg_every=1, labels="clean"),
        "oracle": dict(regularizer="none", lam=0.0, drw=False, reg_every=1, drop="wrong_labels"),
        "cl": dict(regularizer="none", lam=0.0, drw=True, reg_every=1, drop="label_issues"),
        "cl_weighted": dict(
            regularizer="har",
            lam=1.0,
            drw=False,
            reg_every=1,
            drop="label_issues",
            reweight="noise_rate",
        ),
    }
    seen, class_weights = {}, {}

    def fake_fit(model, ds, section, *, out_dir, callbacks):
        labels = np.concatenate([y.numpy() for _, y in ds])
        drw = [c for c in callbacks if isinstance(c, DeferredReweighting)]
        seen[os.path.basename(out_dir)] = (labels, drw)
        class_weights[os.path.basename(out_dir)] = model.class_weights.numpy()
        modeling.finish_fit(model, [{"loss": 1.0}], out_dir, resume=False)

    monkeypatch.setattr(modeling, "fit", fake_fit)
    train.run(config, wd)

    wrong = fit["label"] != fit["clean_label"]
    assert wrong.any()  # the fixture's noise flips some records
    expected = {
        "clean": fit["clean_label"],
        "oracle": fit["label"][~wrong],
        "cl": fit["label"][~np.isin(fit["id"], flagged)],
        "cl_weighted": fit["label"][~np.isin(fit["id"], flagged)],
    }
    for name, labels in expected.items():
        got, drw = seen[name]
        assert np.array_equal(np.sort(got), np.sort(labels)), name
    (callback,) = seen["cl"][1]
    counts = np.bincount(expected["cl"], minlength=10)
    beta = config.train.drw_beta
    assert counts.min() > 0
    weights = (1 - beta) / (1 - beta**counts)
    assert np.allclose(callback.weights, weights / weights.sum() * 10, rtol=1e-6)
    out = os.path.join(wd, "train")
    cl = stage.read_json(os.path.join(out, "cl", training_set.SUMMARY))
    assert cl["dropped"] == len(flagged) and cl["kept"] == len(fit["id"]) - len(flagged)
    assert cl["wrongly_labelled"] == int(wrong.sum())
    assert cl["dropped_wrongly_labelled"] == int((wrong & np.isin(fit["id"], flagged)).sum())
    oracle = stage.read_json(os.path.join(out, "oracle", training_set.SUMMARY))
    assert oracle["precision"] == 1.0 and oracle["recall"] == 1.0
    # CleanLearning's weights, 1 / (1 - r_k), set before the first step; the others none.
    by_hand = [1 / 0.6, 1.0, 2.0, 1 / 0.9, 4.0, 1.0, 1.25, 1.0, 1.0, 1.0]
    assert class_weights["cl_weighted"] == pytest.approx(by_hand, rel=1e-6)
    for name in ("clean", "oracle", "cl"):  # DRW's weights come later, from its callback
        assert np.all(class_weights[name] == 1.0), name
    weighted = stage.read_json(os.path.join(out, "cl_weighted", training_set.SUMMARY))
    assert weighted["class_weights"] == pytest.approx(by_hand)
    assert weighted["dropped"] == cl["dropped"] and "class_weights" not in cl
