"""HARClassifier: Algorithm 1 in one fit, cross-fitting, label issues, sklearn API."""

from __future__ import annotations

import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from har_tf import HARClassifier, label_issues
from har_tf.classifier import NotFittedError

C, N, FEATURES = 3, 360, 6
FLIP_RATE = 0.15


class _Recorder(keras.layers.Layer):
    """Drops column 0 (the example's position) and logs it on every training batch."""

    def __init__(self, log, **kwargs):
        super().__init__(**kwargs)
        self.append = log.append  # not the list itself: Keras would track a copy

    def call(self, x, training=None):
        if training:

            def record(ids):
                self.append(ids.numpy().astype(np.int64))
                return np.float32(0.0)

            seen = tf.ensure_shape(tf.py_function(record, [x[:, 0]], tf.float32), [])
            return x[:, 1:] + 0.0 * tf.stop_gradient(seen)
        return x[:, 1:]


def make_backbone(logs=None, num_classes=C):
    """An MLP on [position, features]; each build gets a fresh log in `logs`."""

    def build():
        log = []
        if logs is not None:
            logs.append(log)
        inputs = keras.Input((FEATURES + 1,))
        h = _Recorder(log)(inputs)
        h = keras.layers.Dense(16, name="hidden")(h)
        h = keras.layers.ReLU(name="relu")(h)
        return keras.Model(inputs, keras.layers.Dense(num_classes)(h))

    return build


def toy_data(seed=0):
    """Separable Gaussian blobs; FLIP_RATE of the labels moved to the next class."""
    rng = np.random.default_rng(seed)
    clean = np.arange(N) % C
    centers = rng.normal(size=(C, FEATURES)) * 4.0
    feats = centers[clean] + rng.normal(size=(N, FEATURES))
    x = np.concatenate([np.arange(N)[:, None], feats], axis=1).astype(np.float32)
    flipped = rng.random(N) < FLIP_RATE
    y = np.where(flipped, (clean + 1) % C, clean).astype(np.int64)
    return x, y, clean


def classifier(logs=None, build_backbone=None, **kwargs):
    options = dict(
        lam=0.1,
        tap_layers=["relu"],
        pretrain_epochs=15,
        epochs=3,
        batch_size=32,
        optimizer=lambda: keras.optimizers.Adam(0.01),
        random_state=3,
    )
    options.update(kwargs)
    return HARClassifier(build_backbone or make_backbone(logs), **options)


class _KeepModel(keras.callbacks.Callback):
    def __init__(self, models):
        super().__init__()
        self.models = models

    def on_train_end(self, logs=None):
        self.models.append(self.model)


@pytest.fixture(scope="module")
def fitted():
    x, y, clean = toy_data()
    logs, models = [], []
    clf = classifier(logs).fit(x, y, pretrain_callbacks=[_KeepModel(models)], verbose=0)
    return clf, x, y, clean, logs, models


def test_cross_fit_each_example_gets_one_prediction_from_the_model_not_trained_on_it(fitted):
    clf, x, y, _, logs, models = fitted
    half_a, half_b = clf.halves_
    np.testing.assert_array_equal(np.sort(np.concatenate([half_a, half_b])), np.arange(N))
    for c in range(C):  # stratified: floor(n_c / 2) of each label in half A
        assert np.sum(y[half_a] == c) == np.sum(y == c) // 2
    # The trained backbones, in order: pretrain on A, pretrain on B, final model.
    trained = [np.unique(np.concatenate(log)) for log in logs if log]
    assert len(trained) == 3 and len(models) == 2
    np.testing.assert_array_equal(trained[0], half_a)
    np.testing.assert_array_equal(trained[1], half_b)
    np.testing.assert_array_equal(trained[2], np.arange(N))
    assert not np.any(np.isnan(clf.held_out_proba_))
    for model, other in zip(models, (half_b, half_a), strict=True):
        logits = model.predict(x[other], verbose=0).astype(np.float64)
        expected = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        np.testing.assert_allclose(clf.held_out_proba_[other], expected, rtol=1e-5, atol=1e-7)


def test_class_error_counts_and_tau_by_hand(fitted):
    clf, _, y, _, _, _ = fitted
    pred = np.argmax(clf.held_out_proba_, axis=1)
    errors = []
    for c in range(C):
        members = [i for i in range(N) if y[i] == c]
        errors.append(sum(pred[i] != c for i in members) / len(members))
    np.testing.assert_allclose(clf.class_error_, errors)
    counts = [int(np.sum(y == c)) for c in range(C)]
    np.testing.assert_array_equal(clf.class_counts_, counts)
    np.testing.assert_array_equal(clf.held_out_counts_, counts)
    raw = np.array([e**0.6 / n**0.4 for e, n in zip(errors, counts, strict=True)])
    np.testing.assert_allclose(clf.tau_, raw / raw.max())
    np.testing.assert_allclose(clf.model_.tau.numpy(), clf.tau_, rtol=1e-6)
    assert clf.model_.lam == pytest.approx(0.1)


def test_label_issues_rank_flipped_examples_above_clean_ones(fitted):
    clf, _, y, clean, _, _ = fitted
    frame = clf.label_issues_
    assert list(frame.columns) == list(label_issues.COLUMNS)
    assert [str(t) for t in frame.dtypes] == ["int64", "int64", "int64", "float64", "bool"]
    np.testing.assert_array_equal(frame["id"], np.arange(N))
    np.testing.assert_array_equal(frame["given_label"], y)
    np.testing.assert_array_equal(frame["predicted_label"], np.argmax(clf.held_out_proba_, axis=1))
    # Self-confidence: the held-out probability of the given label.
    np.testing.assert_allclose(frame["label_quality"], clf.held_out_proba_[np.arange(N), y])
    flipped = y != clean
    assert 20 < flipped.sum() < 100
    score = -frame["label_quality"].to_numpy()
    pairs = [(score[i] > score[j]) + 0.5 * (score[i] == score[j]) for i in np.flatnonzero(flipped)
             for j in np.flatnonzero(~flipped)]  # fmt: skip
    assert np.mean(pairs) > 0.9  # AUROC by a loop over (flipped, clean) pairs
    assert frame["is_label_issue"][flipped].mean() > 0.7
    assert frame["is_label_issue"][~flipped].mean() < 0.2
    assert clf.noise_rate_.shape == (C,) and np.all((clf.noise_rate_ >= 0) & (clf.noise_rate_ <= 1))


def test_sklearn_style_predict_proba_and_score(fitted):
    clf, x, y, clean, _, _ = fitted
    proba = clf.predict_proba(x)
    assert proba.shape == (N, C)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)
    pred = clf.predict(x)
    assert pred.dtype == np.int64
    np.testing.assert_array_equal(pred, np.argmax(proba, axis=1))
    assert clf.score(x, clean) == pytest.approx(np.mean(pred == clean))
    assert clf.score(x, clean) > 0.9  # learnable: the final model fits the clean labels
    ds = tf.data.Dataset.from_tensor_slices((x, clean)).batch(50)
    assert clf.score(ds) == pytest.approx(np.mean(pred == clean))
    np.testing.assert_array_equal(clf.classes_, np.arange(C))


@pytest.mark.slow
def test_drop_label_issues_trains_the_final_model_on_the_unflagged_examples():
    from cleanlab.classification import CleanLearning

    x, y, clean = toy_data()
    logs = []
    clf = classifier(logs, drop_label_issues=True).fit(x, y, verbose=0)
    # The reference: cleanlab's CleanLearning on the same held-out probabilities.
    reference = CleanLearning().find_label_issues(labels=y, pred_probs=clf.held_out_proba_)
    flagged = reference["is_label_issue"].to_numpy()
    np.testing.assert_array_equal(clf.dropped_mask_, flagged)
    np.testing.assert_array_equal(clf.label_issues_["is_label_issue"], flagged)
    assert clf.n_dropped_ == flagged.sum() > 0
    trained = [np.unique(np.concatenate(log)) for log in logs if log]
    assert len(trained) == 3
    np.testing.assert_array_equal(trained[2], np.flatnonzero(~flagged))  # the final fit
    # tau from every held-out example, flagged ones included.
    pred = np.argmax(clf.held_out_proba_, axis=1)
    errors = np.array([np.mean(pred[y == c] != c) for c in range(C)])
    raw = errors**0.6 / np.bincount(y) ** 0.4
    np.testing.assert_allclose(clf.tau_, raw / raw.max())
    assert (y != clean)[flagged].mean() > 0.5  # most dropped labels were flipped


class _Fail(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        raise RuntimeError("interrupted")


def test_a_failed_refit_leaves_the_earlier_fit_intact(fitted):
    clf, x, y, _, _, _ = fitted
    before = {k: v for k, v in vars(clf).items() if k.endswith("_")}
    tau = clf.tau_.copy()
    with pytest.raises(RuntimeError, match="interrupted"):
        clf.fit(x, (y + 1) % C, pretrain_callbacks=[_Fail()], verbose=0)
    after = {k: v for k, v in vars(clf).items() if k.endswith("_")}
    assert after.keys() == before.keys()
    assert all(after[k] is before[k] for k in before)
    np.testing.assert_array_equal(clf.tau_, tau)


def test_get_params_set_params_round_trip():
    clf = classifier()
    params = clf.get_params()
    assert params["lam"] == 0.1 and params["cross_fit"] is True
    other = HARClassifier(**params)
    assert other.get_params() == params
    assert other.set_params(lam=2.0, epochs=7) is other
    assert other.get_params() == {**params, "lam": 2.0, "epochs": 7}
    with pytest.raises(ValueError, match="Invalid parameter 'lamda'"):
        other.set_params(lamda=1.0)


@pytest.mark.slow
def test_one_split_and_dataset_input():
    x, y, _ = toy_data()
    logs = []
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(64)
    clf = classifier(logs, cross_fit=False, epochs=1, drop_label_issues=True).fit(ds, verbose=0)
    half_a, half_b = clf.halves_
    trained = [np.unique(np.concatenate(log)) for log in logs if log]
    assert len(trained) == 2  # one pretraining (half A) and the final model
    np.testing.assert_array_equal(trained[0], half_a)
    # Only half B is scored, so only half B can be dropped.
    assert not clf.dropped_mask_[half_a].any() and clf.n_dropped_ > 0
    np.testing.assert_array_equal(trained[1], np.flatnonzero(~clf.dropped_mask_))
    assert np.all(np.isnan(clf.held_out_proba_[half_a]))
    assert not np.any(np.isnan(clf.held_out_proba_[half_b]))
    np.testing.assert_array_equal(clf.label_issues_["id"], half_b)
    np.testing.assert_array_equal(clf.held_out_counts_, np.bincount(y[half_b], minlength=C))
    pred = np.argmax(clf.held_out_proba_[half_b], axis=1)
    np.testing.assert_allclose(
        clf.class_error_, [np.mean(pred[y[half_b] == c] != c) for c in range(C)]
    )


# -- bad input -------------------------------------------------------------------------


def _bad(match, x=None, y=None, exc=ValueError, **kwargs):
    x0, y0, _ = toy_data()
    clf = classifier(**kwargs)
    with pytest.raises(exc, match=match):
        clf.fit(x0 if x is None else x, y0 if y is None else y, verbose=0)


def test_a_fourth_label_for_a_backbone_of_three_logits():
    y = toy_data()[1].copy()
    y[5] = -1  # any value is a label: a fourth class, with one example
    _bad("class -1 has 1 example; every class needs at least 2", y=y)
    y[6] = -1
    _bad(f"the backbone ends in {C} logits but y has {C + 1} classes", y=y)


def test_x_and_y_of_different_lengths():
    _bad(r"inconsistent numbers of samples: \[360, 359\]", y=toy_data()[1][:-1])


def test_class_with_fewer_than_two_examples():
    y = toy_data()[1].copy()
    y[y == 2] = 1
    y[7] = 2
    _bad("class 2 has 1 example; every class needs at least 2", y=y)


def test_classes_come_from_y_not_from_the_backbone():
    y = toy_data()[1].copy()
    y[y == 2] = 1
    _bad(f"the backbone ends in {C} logits but y has 2 classes", y=y)


def test_backbone_that_does_not_end_in_c_logits():
    _bad("y has 3 classes but num_classes is 4", num_classes=4)
    _bad(
        "the backbone ends in 2 logits but y has 3 classes",
        build_backbone=make_backbone(num_classes=2),
    )

    def sequence_output():
        inputs = keras.Input((FEATURES + 1,))
        return keras.Model(inputs, keras.layers.Reshape((FEATURES + 1, 1))(inputs))

    _bad("must end in one", build_backbone=sequence_output)
    _bad("must return a keras.Model", exc=TypeError, build_backbone=lambda: "model")


def test_labels_not_class_ids():
    y = toy_data()[1]
    _bad("one-hot", y=np.eye(C)[y])
    _bad("Unknown label type: continuous", y=y + 0.5)
    with pytest.raises(ValueError, match="requires y to be passed, but the target y is None"):
        classifier().fit(toy_data()[0])
    ds = tf.data.Dataset.from_tensor_slices((toy_data()[0], y))
    with pytest.raises(ValueError, match="pass y inside the dataset"):
        classifier().fit(ds, y)


def test_predict_before_fit():
    clf = classifier()
    for call in (clf.predict, clf.predict_proba):
        with pytest.raises(NotFittedError, match="not fitted yet"):
            call(toy_data()[0])
    with pytest.raises(NotFittedError, match="not fitted yet"):
        clf.score(*toy_data()[:2])


def test_missing_cleanlab_is_named_before_training(monkeypatch):
    monkeypatch.setitem(sys.modules, "cleanlab", None)
    logs = []
    with pytest.raises(ImportError, match=r"har-tf\[label-issues\]"):
        classifier(logs).fit(*toy_data()[:2], verbose=0)
    assert not logs  # nothing was built or trained
