"""config.tau.cross_fit: pretrain on both halves, label_issues.csv, detection metrics;
and HARClassifier on the same records gives the same halves, error and tau."""

from __future__ import annotations

import os

import keras
import numpy as np
import pytest

from configs import fashion_mnist_hetero
from har_tf import HARClassifier
from pipeline import estimate_tau, evaluate, preprocess, pretrain
from pipeline.core import stage
from pipeline.data import datasets, detection
from pipeline.evaluation import report as evaluate_report
from pipeline.training import modeling
from tests.pipeline import idx_fixtures, workdir_fixtures

# ----------------------------------------------------------------------------------
# Fast: detection metrics and fingerprints


def test_auroc_equals_a_loop_over_positive_negative_pairs():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, 60).astype(float)  # many ties
    positive = rng.random(60) < 0.3
    pairs = [
        1.0 if scores[i] > scores[j] else 0.5 if scores[i] == scores[j] else 0.0
        for i in np.flatnonzero(positive)
        for j in np.flatnonzero(~positive)
    ]
    assert detection.auroc(positive, scores) == pytest.approx(np.mean(pairs))
    assert detection.auroc([True, False], [1.0, 0.0]) == 1.0
    assert np.isnan(detection.auroc([True, True], [1.0, 0.0]))


def test_detection_report_hand_computed():
    given = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    clean = np.array([0, 1, 1, 0, 1, 1, 0, 1])  # noisy: 1, 2 (label 0), 6 (label 1)
    flags = np.array([0, 1, 0, 1, 0, 0, 1, 1], bool)
    quality = np.array([0.9, 0.1, 0.2, 0.3, 0.8, 0.7, 0.6, 0.5])
    rep = detection.report(given, clean, flags, quality, 2)
    overall = rep["overall"]
    assert (overall["n"], overall["noisy"], overall["flagged"]) == (8, 3, 4)
    assert overall["precision"] == pytest.approx(2 / 4)  # hits: 1 and 6
    assert overall["recall"] == pytest.approx(2 / 3)
    # Scores -quality: noisy 1, 2, 6 = -0.1, -0.2, -0.6 vs clean -0.9, -0.3, -0.8,
    # -0.7, -0.5: noisy above clean in 5 + 5 + 3 of 15 pairs.
    assert overall["auroc"] == pytest.approx(13 / 15)
    label0 = rep["per_class"][0]
    assert (label0["precision"], label0["recall"], label0["auroc"]) == (0.5, 0.5, 1.0)
    label1 = rep["per_class"][1]
    assert (label1["noisy"], label1["precision"], label1["recall"]) == (1, 0.5, 1.0)
    assert label1["auroc"] == pytest.approx(2 / 3)  # -0.6 above -0.8 and -0.7, not -0.5
    lines = detection.markdown(rep)
    assert "| all | 8 | 3 | 4 | 0.500 | 0.667 | 0.867 |" in lines


def test_cross_fit_enters_fingerprints_only_when_set():
    # Workdirs made before the field existed keep their fingerprints.
    config = fashion_mnist_hetero.get_config("smoke")
    base = stage.fingerprints(config)
    assert "tau.cross_fit" not in stage.config_section(config, "pretrain")
    assert "cross_fit" not in stage.config_section(config, "estimate_tau")["tau"]
    config.tau.cross_fit = True
    assert stage.config_section(config, "pretrain")["tau.cross_fit"] is True
    changed = stage.fingerprints(config)
    assert [n for n in stage.STAGES if changed[n] != base[n]] == list(stage.STAGES[1:])


# ----------------------------------------------------------------------------------
# Slow: the stages on a tiny generated dataset, and HARClassifier on the same records


@pytest.fixture(scope="module")
def cross_fitted(tmp_path_factory):
    idx_dir = tmp_path_factory.mktemp("idx")
    idx_fixtures.write_dataset(idx_dir, num_train=600, num_test=100)
    config = fashion_mnist_hetero.get_config("smoke")
    config.data.data_dir = str(idx_dir)
    config.data.limit_train = 600
    config.data.limit_test = 100
    config.tau.cross_fit = True
    # One batch per epoch and no augmentation: the order of examples cannot matter,
    # so HARClassifier (arrays, Keras's shuffle) trains the same models.
    config.pretrain.batch_size = 1024
    config.pretrain.augment = False
    config.pretrain.epochs = 2
    workdir = str(tmp_path_factory.mktemp("work"))
    preprocess.run(config, workdir)
    pretrain.run(config, workdir)
    estimate_tau.run(config, workdir)
    return config, workdir


@pytest.mark.slow
def test_cross_fit_pretrains_both_halves_and_writes_label_issues(cross_fitted):
    config, workdir = cross_fitted
    pre = stage.stage_dir(workdir, "pretrain")
    assert modeling.is_fitted(pre) and modeling.is_fitted(os.path.join(pre, pretrain.HALF_B))
    train = datasets.read_labels(workdir, "train")
    out = stage.stage_dir(workdir, "estimate_tau")
    tau = stage.read_json(os.path.join(out, "tau.json"))
    assert tau["cross_fit"] is True
    # Every train example is held out once: the supports add up to the counts.
    assert tau["held_out"] == tau["n"] == np.bincount(train["label"], minlength=10).tolist()
    assert len(tau["cleanlab_noise_rate"]) == 10
    with open(os.path.join(out, detection.LABEL_ISSUES)) as f:
        header = f.readline().strip().split(",")
    assert tuple(header) == detection.CSV_COLUMNS
    table = np.genfromtxt(os.path.join(out, detection.LABEL_ISSUES), delimiter=",", names=True)
    np.testing.assert_array_equal(table["id"], np.sort(train["id"]))
    det = detection.read(workdir, 10)
    assert det["overall"]["n"] == len(train["id"])
    assert det["overall"]["noisy"] == int(np.sum(train["label"] != train["clean_label"]))
    report = {"runs": {}, "per_epoch_test": False, "label_issue_detection": det}
    assert "## Noisy-example detection" in evaluate_report.markdown(report, [])


@pytest.mark.slow
def test_classifier_matches_the_pipeline_stages(cross_fitted):
    config, workdir = cross_fitted
    ds = datasets.make_dataset(workdir, "train", batch_size=4096, training=False, with_meta=True)
    xs, ys, ids = [], [], []
    for x, y, meta in ds.as_numpy_iterator():
        xs.append(x)
        ys.append(y)
        ids.append(meta["id"])
    ids = np.concatenate(ids)
    order = np.argsort(ids)
    x, y, ids = np.concatenate(xs)[order], np.concatenate(ys)[order].astype(np.int64), ids[order]
    section = config.pretrain
    clf = HARClassifier(
        lambda: modeling.build_backbone(config),
        lam=0.0,
        cross_fit=True,
        pretrain_epochs=section.epochs,
        epochs=1,
        batch_size=section.batch_size,
        optimizer=lambda: keras.optimizers.SGD(section.learning_rate, momentum=section.momentum),
        weight_decay=section.weight_decay,
        random_state=config.seed,
        find_label_issues=False,
    ).fit(x, y, verbose=0)
    split = np.load(os.path.join(stage.stage_dir(workdir, "pretrain"), "split.npz"))
    np.testing.assert_array_equal(ids[clf.halves_[0]], split["half_a"])
    np.testing.assert_array_equal(ids[clf.halves_[1]], split["half_b"])
    tau = stage.read_json(os.path.join(stage.stage_dir(workdir, "estimate_tau"), "tau.json"))
    np.testing.assert_allclose(clf.class_error_, tau["err"])
    np.testing.assert_allclose(clf.tau_, tau["tau"], rtol=1e-9)
    np.testing.assert_array_equal(clf.class_counts_, tau["n"])


@pytest.mark.slow
def test_evaluate_reports_detection(cross_fitted):
    config, workdir = cross_fitted
    with stage.stage_output(workdir, "train") as out:  # an untrained ERM run suffices
        model = modeling.build_har_model(config, config.train, lam=0.0, seed=0)
        os.makedirs(os.path.join(out, "erm"))
        model.save(os.path.join(out, "erm", "model.keras"))
        stage.write_json(
            os.path.join(out, "erm", "history.json"),
            {"loss": [2.3], **{k: v[:1] for k, v in workdir_fixtures.TEST_HISTORY.items()}},
        )
    evaluate.run(config, workdir)
    out = stage.stage_dir(workdir, "evaluate")
    report = stage.read_json(os.path.join(out, "report.json"))
    expected = detection.read(workdir, 10)["overall"]
    for key, value in report["label_issue_detection"]["overall"].items():
        if value is None:  # report.json writes NaN as null
            assert np.isnan(expected[key]), key
        else:
            assert value == pytest.approx(expected[key]), key
    with open(os.path.join(out, "report.md")) as f:
        text = f.read()
    assert "## Noisy-example detection" in text
    overall = report["label_issue_detection"]["overall"]
    assert f"| all | {overall['n']} | {overall['noisy']} | {overall['flagged']} |" in text
