"""HARClassifier as a scikit-learn estimator: labels, tables, the default backbones,
random_state / verbose / sample_weight, input checks, clone, pickling, Pipeline,
cross_val_score, GridSearchCV and check_estimator."""

from __future__ import annotations

import functools
import os
import pickle

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from sklearn.base import clone
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from har_tf import HARClassifier
from har_tf import classifier_inputs as inputs
from har_tf.classifier import EXPECTED_FAILED_CHECKS, NotFittedError
from har_tf.har_model import HARModel
from har_tf.models import defaults

C, N, F = 3, 90, 4


def table(seed=0, n=N):
    """Three separable Gaussian blobs in F features; int class ids 0..2 (by row % 3)."""
    rng = np.random.default_rng(seed)
    ids = np.arange(n) % C
    x = rng.normal(size=(C, F))[ids] * 3.0 + rng.normal(size=(n, F))
    return x.astype(np.float32), ids


def tiny(**kwargs) -> HARClassifier:
    """A HARClassifier on the default MLP that fits in about a second per training."""
    options = dict(
        hidden_layer_sizes=(8,),
        lam=0.1,
        pretrain_epochs=2,
        epochs=2,
        batch_size=32,
        optimizer=functools.partial(keras.optimizers.Adam, 0.05),  # pickles, clones
    )
    return HARClassifier(**{**options, **kwargs})


@pytest.fixture(scope="module")
def fitted():
    """One fit on a DataFrame with string labels."""
    x, ids = table()
    names = np.array(["zebra", "ant", "moose"])  # not in sorted order
    frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(F)])
    return tiny().fit(frame, names[ids]), frame, names[ids]


@pytest.fixture
def eager():
    """TensorFlow functions run eagerly. A test that fits many fresh models on tiny
    datasets for a few steps each pays more for tracing each new model's train step
    (HAR's gradient of a gradient) and predict step than for running them eagerly
    (docs/CLASSIFIER.md has the figures). The tests that use it check scikit-learn's
    wiring (check_estimator, Pipeline, cross_val_score, GridSearchCV, the verbose
    parameter, the choice of default backbone), which does not depend on tracing;
    the tests of what a fit computes (labels, repeatability, sample_weight, tau,
    predictions) run traced, the path users run."""
    tf.config.run_functions_eagerly(True)
    yield
    tf.config.run_functions_eagerly(False)


# -- labels and tables -----------------------------------------------------------------


@pytest.mark.slow  # two or three fits besides the fixture's
def test_string_and_non_contiguous_labels_train_as_their_sorted_class_ids(fitted):
    clf, frame, y = fitted
    np.testing.assert_array_equal(clf.classes_, ["ant", "moose", "zebra"])
    # The same data with integer class ids 0..2 in classes_' order, and with
    # non-contiguous integers, must train the same network (same seed).
    order = {"ant": 0, "moose": 1, "zebra": 2}
    ids = np.array([order[v] for v in y])
    by_id = tiny().fit(frame.to_numpy(), ids)
    by_odd = tiny().fit(frame.to_numpy().tolist(), ids * 10 - 7)  # also a list of lists
    np.testing.assert_array_equal(by_odd.classes_, [-7, 3, 13])
    proba = clf.predict_proba(frame)
    np.testing.assert_allclose(by_id.predict_proba(frame.to_numpy()), proba, atol=1e-6)
    np.testing.assert_allclose(by_odd.predict_proba(frame.to_numpy()), proba, atol=1e-6)
    np.testing.assert_allclose(clf.tau_, by_id.tau_)
    pred = clf.predict(frame)
    assert pred.dtype.kind == "U"
    np.testing.assert_array_equal(pred, np.array(["ant", "moose", "zebra"])[proba.argmax(1)])
    np.testing.assert_array_equal(
        by_odd.predict(frame.to_numpy()), np.array([-7, 3, 13])[proba.argmax(1)]
    )
    assert clf.score(frame, y) == pytest.approx(np.mean(pred == y))
    issues = clf.label_issues_
    np.testing.assert_array_equal(issues["given_label"], y)
    np.testing.assert_array_equal(
        issues["predicted_label"], clf.classes_[clf.held_out_proba_.argmax(1)]
    )


@pytest.mark.filterwarnings("ignore:X does not have valid feature names")
def test_dataframe_feature_names_and_counts_are_checked_at_predict(fitted):
    clf, frame, _ = fitted
    np.testing.assert_array_equal(clf.feature_names_in_, frame.columns)
    assert clf.n_features_in_ == F
    with pytest.raises(ValueError, match="feature names should match"):
        clf.predict(frame[frame.columns[::-1]])
    with pytest.raises(ValueError, match=f"X has 3 features, but HARClassifier is expecting {F}"):
        clf.predict(frame.to_numpy()[:, :3])


# -- the default backbones -------------------------------------------------------------


def test_default_backbone_of_a_table_is_an_mlp_with_its_hidden_activations_tapped(monkeypatch):
    built = []
    init = HARModel.__init__

    def spy(self, backbone, **kwargs):
        built.append((backbone, kwargs))
        init(self, backbone, **kwargs)

    monkeypatch.setattr(HARModel, "__init__", spy)
    builds = []
    mlp = defaults.mlp
    monkeypatch.setattr(defaults, "mlp", lambda **kw: builds.append(mlp(**kw)) or builds[-1])
    x, y = table()
    tiny(hidden_layer_sizes=(6, 5), pretrain_epochs=1, epochs=1).fit(x, y)
    assert len(built) == 3  # pretrain A, pretrain B, final
    # One build per model trained: none is built only to be checked.
    assert [id(b) for b in builds] == [id(b) for b, _ in built]
    for backbone, _ in built:
        dense = [layer for layer in backbone.layers if isinstance(layer, keras.layers.Dense)]
        assert [layer.units for layer in dense] == [6, 5, C]
        assert backbone.input_shape == (None, F)
    assert [kw["tap_layers"] for _, kw in built] == [[], [], ["hidden1", "hidden2"]]


@pytest.mark.slow
def test_default_backbone_of_images_is_a_small_resnet(eager):
    rng = np.random.default_rng(0)
    y = np.arange(24) % 2
    x = rng.normal(size=(24, 8, 8, 1)).astype(np.float32) + y[:, None, None, None]
    clf = tiny(pretrain_epochs=1, epochs=1).fit(x, y)
    backbone = clf.model_.backbone
    assert backbone.name == "cifar_resnet" and backbone.input_shape == (None, 8, 8, 1)
    # ResNet-8: one block per stage, two tapped pre-affine BNs per block.
    assert clf.model_.tap_layers == [f"stage{s}_block1_bn{i}" for s in (1, 2, 3) for i in (1, 2)]
    assert clf.predict(x).shape == (24,)
    with pytest.raises(ValueError, match=r"fitted on examples of shape \(8, 8, 1\)"):
        clf.predict(x[:, :, :4])


def test_a_wrong_backbone_fails_before_any_training(monkeypatch):
    monkeypatch.setattr(HARModel, "fit", lambda *a, **k: pytest.fail("trained"))
    build = functools.partial(defaults.mlp, num_features=F, num_classes=C - 1)
    with pytest.raises(ValueError, match=f"the backbone ends in {C - 1} logits but y has {C}"):
        tiny(build_backbone=build).fit(*table())


def test_predictions_of_arrays_are_those_of_keras_predict_in_the_same_batches():
    model = HARModel(defaults.mlp(num_features=F, num_classes=C), lam=0.0, tap_layers=[])
    x = table(n=70)[0]  # 2 full batches of 32 and one of 6
    got = inputs.predict_arrays(model, x, 32)
    np.testing.assert_array_equal(got, model.predict(x, batch_size=32, verbose=0))


def test_no_default_backbone_for_other_ranks():
    with pytest.raises(ValueError, match=r"no default backbone for examples of shape \(5, 2\)"):
        tiny().fit(np.zeros((10, 5, 2)), np.arange(10) % 2)


# -- random_state, verbose, sample_weight -----------------------------------------------


@pytest.mark.slow  # two or three fits besides the fixture's
def test_verbose_is_silent_by_default_and_prints_keras_progress_when_asked(capfd, eager):
    x, y = table()
    tiny(pretrain_epochs=1, epochs=1).fit(x, y)
    assert " - accuracy: " not in capfd.readouterr().out
    tiny(pretrain_epochs=1, epochs=1, verbose=2).fit(x, y)
    assert capfd.readouterr().out.count(" - accuracy: ") == 3  # a line per training


@pytest.mark.slow  # two or three fits besides the fixture's
def test_random_state_repeats_a_fit_and_another_changes_it(fitted):
    clf, frame, y = fitted
    again = tiny().fit(frame, y)
    np.testing.assert_array_equal(again.halves_[0], clf.halves_[0])
    np.testing.assert_allclose(again.predict_proba(frame), clf.predict_proba(frame), atol=1e-6)
    other = tiny(random_state=1).fit(frame, y)
    assert not np.array_equal(other.halves_[0], clf.halves_[0])
    with pytest.warns(FutureWarning, match="use random_state"):
        old = tiny(seed=1).fit(frame, y)
    np.testing.assert_array_equal(old.halves_[0], other.halves_[0])


def test_sample_weight_reaches_every_training_and_weights_tau(monkeypatch):
    seen = []
    fit = HARModel.fit

    def spy(self, *args, **kwargs):
        seen.append((kwargs["x"], kwargs["sample_weight"]))
        return fit(self, *args, **kwargs)

    monkeypatch.setattr(HARModel, "fit", spy)
    x, y = table()
    x[:, 0] = np.arange(N)  # column 0 names the row
    w = np.random.default_rng(0).integers(1, 4, size=N).astype(np.float64)
    clf = tiny(pretrain_epochs=1, epochs=1).fit(x, y, sample_weight=w)
    half_a, half_b = clf.halves_
    for (xs, ws), rows in zip(seen, (half_a, half_b, np.arange(N)), strict=True):
        np.testing.assert_array_equal(xs[:, 0], rows)
        np.testing.assert_array_equal(ws, w[rows])
    # tau by hand: weighted held-out error and weighted counts per class.
    pred = clf.held_out_proba_.argmax(1)
    err = [sum(w[i] for i in range(N) if y[i] == c and pred[i] != c)
           / sum(w[i] for i in range(N) if y[i] == c) for c in range(C)]  # fmt: skip
    counts = [sum(w[i] for i in range(N) if y[i] == c) for c in range(C)]
    np.testing.assert_allclose(clf.class_error_, err)
    np.testing.assert_allclose(clf.class_counts_, counts)
    raw = np.array(err) ** 0.6 / np.array(counts) ** 0.4
    np.testing.assert_allclose(clf.tau_, raw / raw.max())


def test_without_a_held_out_error_tau_comes_from_the_counts_alone():
    y = np.repeat([0, 1, 2], [30, 20, 10])
    x = np.eye(F, dtype=np.float32)[y] * 5.0  # one feature per class: learnt at once
    with pytest.warns(UserWarning, match="every held-out prediction is right"):
        clf = tiny(pretrain_epochs=10).fit(x, y)
    np.testing.assert_array_equal(clf.class_error_, 0.0)
    counts = np.array([30.0, 20.0, 10.0])
    np.testing.assert_allclose(clf.tau_, counts**-0.4 / (counts**-0.4).max())


# -- clone, pickling, Pipeline, cross-validation ----------------------------------------


def test_clone_keeps_the_parameters_and_drops_the_fit(fitted):
    clf, _, _ = fitted
    copy = clone(clf)
    params, copied = clf.get_params(), copy.get_params()
    opt, copied_opt = params.pop("optimizer"), copied.pop("optimizer")  # a deep copy
    assert copied == params
    assert (copied_opt.func, copied_opt.args) == (opt.func, opt.args)
    assert not hasattr(copy, "model_")
    with pytest.raises(NotFittedError, match="not fitted yet"):
        copy.predict(np.zeros((2, F)))


def test_pickle_round_trip_predicts_the_same(fitted):
    clf, frame, _ = fitted
    back = pickle.loads(pickle.dumps(clf))
    np.testing.assert_allclose(back.predict_proba(frame), clf.predict_proba(frame), atol=1e-7)
    np.testing.assert_array_equal(back.classes_, clf.classes_)
    np.testing.assert_array_equal(back.tau_, clf.tau_)


@pytest.mark.slow
def test_pipeline_and_cross_val_score_equal_a_loop_over_the_folds(eager):
    x, ids = table(n=60)
    y = np.array(["a", "b", "c"])[ids]
    pipe = make_pipeline(StandardScaler(), tiny(pretrain_epochs=1, epochs=2))
    cv = StratifiedKFold(2, shuffle=True, random_state=0)
    scores = cross_val_score(pipe, x, y, cv=cv, scoring="balanced_accuracy")
    expected = []
    for train, test in cv.split(x, y):
        scaler = StandardScaler().fit(x[train])
        clf = tiny(pretrain_epochs=1, epochs=2).fit(scaler.transform(x[train]), y[train])
        expected.append(balanced_accuracy_score(y[test], clf.predict(scaler.transform(x[test]))))
    np.testing.assert_allclose(scores, expected)


@pytest.mark.slow
def test_grid_search_over_lam_and_pretrain_epochs_picks_the_best_of_a_loop(eager):
    x, y = table(n=60)
    grid = {"lam": [0.0, 1.0], "pretrain_epochs": [1, 2]}
    cv = StratifiedKFold(2, shuffle=True, random_state=0)
    search = GridSearchCV(tiny(epochs=2), grid, cv=cv, scoring="balanced_accuracy", n_jobs=1)
    search.fit(x, y)
    by_hand = {}
    for lam in grid["lam"]:
        for pretrain_epochs in grid["pretrain_epochs"]:
            folds = []
            for train, test in cv.split(x, y):
                clf = tiny(epochs=2, lam=lam, pretrain_epochs=pretrain_epochs).fit(
                    x[train], y[train]
                )
                folds.append(balanced_accuracy_score(y[test], clf.predict(x[test])))
            by_hand[(lam, pretrain_epochs)] = np.mean(folds)
    got = {
        (p["lam"], p["pretrain_epochs"]): s
        for p, s in zip(search.cv_results_["params"], search.cv_results_["mean_test_score"],
                        strict=True)
    }  # fmt: skip
    assert got.keys() == by_hand.keys()
    for key, score in by_hand.items():
        assert got[key] == pytest.approx(score)
    best = max(by_hand, key=lambda k: (by_hand[k], -list(by_hand).index(k)))
    assert (search.best_params_["lam"], search.best_params_["pretrain_epochs"]) == best
    assert search.best_estimator_.model_.lam == best[0]


def for_checks() -> HARClassifier:
    """The tiny configuration of the checks: one full batch per epoch (the checks'
    datasets have at most 300 rows), one pretraining epoch, two final ones at a
    learning rate high enough for check_classifiers_train's training accuracy
    (> 0.83 on its blobs; measured 0.97 binary, 0.90 with 3 classes). lam > 0 and
    cross-fitting: every check runs the full HAR path, three trainings per fit."""
    return tiny(
        hidden_layer_sizes=(16,),
        pretrain_epochs=1,
        epochs=2,
        batch_size=512,
        optimizer=functools.partial(keras.optimizers.Adam, 0.2),
    )


@pytest.mark.filterwarnings("ignore:every held-out prediction is right")
@parametrize_with_checks([for_checks()], expected_failed_checks=lambda _: EXPECTED_FAILED_CHECKS)
def test_sklearn_check(estimator, check, eager):
    """scikit-learn's check_estimator, one test per check; the expected failures are
    marked xfail with their reasons (har_tf.classifier.EXPECTED_FAILED_CHECKS)."""
    check(estimator)


# -- inputs a user can act on ------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"lam": np.inf}, "lam must be a finite number >= 0, got inf"),
        ({"lam": np.nan}, "lam must be a finite number >= 0, got nan"),
        ({"lam": -1.0}, "lam must be a finite number >= 0, got -1.0"),
        ({"epochs": 0}, "epochs must be an integer >= 1, got 0"),
        ({"pretrain_epochs": 0}, "pretrain_epochs must be an integer >= 1, got 0"),
        ({"batch_size": 0}, "batch_size must be an integer >= 1, got 0"),
        ({"batch_size": -5}, "batch_size must be an integer >= 1, got -5"),
        ({"batch_size": 2.5}, "batch_size must be an integer >= 1, got 2.5"),
        ({"hidden_layer_sizes": (8, 0)}, "hidden_layer_sizes must be one or more positive"),
        ({"verbose": 3}, "verbose must be 0, 1, 2 or 'auto', got 3"),
        ({"random_state": "x"}, "cannot be used to seed"),
        ({"drop_label_issues": True, "find_label_issues": False}, "needs find_label_issues"),
    ],
)
def test_bad_hyperparameters_are_named_before_training(params, match, monkeypatch):
    monkeypatch.setattr(HARModel, "fit", lambda *a, **k: pytest.fail("trained"))
    with pytest.raises(ValueError, match=match):
        tiny(**params).fit(*table())


def _x_with(value):
    x = table()[0].copy()
    x[7, 2] = value
    return x


@pytest.mark.parametrize(
    ("x", "y", "match"),
    [
        (_x_with(np.nan), None, "Input X contains NaN"),
        (_x_with(np.inf), None, "Input X contains infinity"),
        (None, np.zeros(N, int), r"y has only one class \(0\)"),
        (None, np.r_[np.zeros(N - 1, int), 1], "class 1 has 1 example; every class needs"),
        (None, np.arange(N - 1) % C, r"inconsistent numbers of samples: \[90, 89\]"),
        (None, np.eye(C)[table()[1]], r"one-hot"),
    ],
)  # fmt: skip
def test_bad_training_data_is_named_before_training(x, y, match, monkeypatch):
    monkeypatch.setattr(HARModel, "fit", lambda *a, **k: pytest.fail("trained"))
    x0, y0 = table()
    with pytest.raises(ValueError, match=match):
        tiny().fit(x0 if x is None else x, y0 if y is None else y)


def test_one_nan_pixel_in_an_image_batch():
    x = np.zeros((12, 4, 4, 1), np.float32)
    x[3, 1, 2, 0] = np.nan
    with pytest.raises(ValueError, match="Input X contains NaN"):
        tiny().fit(x, np.arange(12) % 2)


def test_a_nan_inside_a_dataset_is_named_before_training(monkeypatch):
    monkeypatch.setattr(HARModel, "fit", lambda *a, **k: pytest.fail("trained"))
    x, y = table()
    x[4, 0] = np.nan
    x[9, 1] = np.inf
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(32)
    with pytest.raises(ValueError, match=r"contains NaN or infinity: example 4 .*\(2 example"):
        tiny().fit(ds)


def test_a_diverged_pretraining_is_named(monkeypatch):
    x, y = table()
    monkeypatch.setattr(
        HARModel, "predict_on_batch", lambda self, x: np.full((len(x), C), np.nan, np.float32)
    )
    with pytest.raises(FloatingPointError, match="half A predicts non-finite probabilities"):
        tiny(pretrain_epochs=1).fit(x, y)


def test_zero_total_weight_for_a_class(monkeypatch):
    monkeypatch.setattr(HARModel, "fit", lambda *a, **k: pytest.fail("trained"))
    x, y = table()
    with pytest.raises(ValueError, match="class 2 has a total sample_weight of 0"):
        tiny().fit(x, y, sample_weight=(y != 2).astype(float))
    with pytest.raises(ValueError, match="sample_weight must be finite and >= 0"):
        tiny().fit(x, y, sample_weight=np.where(y == 2, -1.0, 1.0))
    with pytest.raises(ValueError, match="every sample_weight is zero"):
        tiny().fit(x, y, sample_weight=np.zeros(N))


def test_bad_predict_inputs(fitted):
    clf, frame, _ = fitted
    x = frame.to_numpy()
    with pytest.raises(ValueError, match="Expected 2D array, got 1D array"):
        clf.predict(x[0])
    with pytest.raises(ValueError, match=r"X has examples of shape \(4, 1\), but HARClassifier"):
        clf.predict(x[:, :, None])
    with pytest.raises(ValueError, match=r"Found array with 0 sample\(s\)"):
        clf.predict(x[:0])
    with pytest.raises(ValueError, match="Input X contains NaN"):
        clf.predict_proba(np.where(x == x[0, 0], np.nan, x))
    with pytest.raises(NotFittedError, match="not fitted yet"):
        tiny().predict_proba(x)


# -- docs/CLASSIFIER.md's tabular example -------------------------------------------------

DOCS = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "CLASSIFIER.md")


def _doc_example() -> str:
    """The python block under "A table: CSV to GridSearchCV to label issues"."""
    with open(DOCS) as f:
        text = f.read()
    section = text[text.index("## A table: CSV to GridSearchCV to label issues") :]
    start = section.index("```python\n") + len("```python\n")
    return section[start : section.index("\n```", start)]


@pytest.mark.slow  # 10 fits of 3 trainings (3 lambdas x 3 folds, the refit), eager
def test_the_docs_tabular_example_runs_as_written(tmp_path, monkeypatch, eager, capsys):
    """docs/CLASSIFIER.md's CSV -> GridSearchCV -> label issues block, line for line,
    except its 20 + 20 epochs (13 minutes) become 1 + 1 on one full batch."""
    code = _doc_example()
    epochs = "HARClassifier(pretrain_epochs=20, epochs=20)"
    assert code.count(epochs) == 1, "the doc's example changed: update this test"
    code = code.replace(epochs, "HARClassifier(pretrain_epochs=1, epochs=1, batch_size=2048)")
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(code, DOCS, "exec"), namespace)  # noqa: S102 (our own documentation)
    out = capsys.readouterr().out
    table = pd.read_csv(tmp_path / "digits.csv")
    assert table.shape == (1797, 65)
    assert set(table["target"]) == {f"digit {d}" for d in range(10)}
    search, clf, issues = namespace["search"], namespace["clf"], namespace["issues"]
    lams = [p["harclassifier__lam"] for p in search.cv_results_["params"]]
    assert lams == [0.0, 1.0, 10.0]
    assert clf is search.best_estimator_[-1]
    assert clf.lam == search.best_params_["harclassifier__lam"]
    y_train = namespace["y_train"].to_numpy()
    given = np.full(len(y_train), None, object)
    given[issues["id"].to_numpy()] = issues["given_label"].to_numpy()
    np.testing.assert_array_equal(given, y_train)  # every training row, by position
    flagged, wrong = namespace["flagged"], namespace["wrong"]
    assert f"flagged {flagged.sum()}; of the {wrong.sum()} wrong labels" in out
    assert "test balanced accuracy:" in out
