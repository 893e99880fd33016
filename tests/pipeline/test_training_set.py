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


def test_make_dataset_refuses_an_unknown_label_key(tmp_path):
    with pytest.raises(ValueError, match="label_key must be"):
        datasets.make_dataset(str(tmp_path), "train", batch_size=4, training=False, label_key="y")


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
        stage.write_json(os.path.join(out, "tau.json"), {"tau": [1.0] * 10})
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
    }
    seen = {}

    def fake_fit(model, ds, section, *, out_dir, callbacks):
        labels = np.concatenate([y.numpy() for _, y in ds])
        drw = [c for c in callbacks if isinstance(c, DeferredReweighting)]
        seen[os.path.basename(out_dir)] = (labels, drw)
        modeling.finish_fit(model, [{"loss": 1.0}], out_dir, resume=False)

    monkeypatch.setattr(modeling, "fit", fake_fit)
    train.run(config, wd)

    wrong = fit["label"] != fit["clean_label"]
    assert wrong.any()  # the fixture's noise flips some records
    expected = {
        "clean": fit["clean_label"],
        "oracle": fit["label"][~wrong],
        "cl": fit["label"][~np.isin(fit["id"], flagged)],
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
