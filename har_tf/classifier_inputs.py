"""HARClassifier's input handling: hyperparameter checks, label encoding, and the
training set as arrays or a `tf.data.Dataset`, one subset at a time.

Each check raises a one-line error that names the argument and the bad value
(scikit-learn's own wording where it has one: `check_X_y`, `validate_data`).
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import tensorflow as tf
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_array, check_random_state, check_X_y

# -- hyperparameters -------------------------------------------------------------------


def _integer(value, name: str, minimum: int) -> None:
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if not ok or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _real(value, name: str, minimum: float = -math.inf) -> None:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or value < minimum:
        bound = "" if minimum == -math.inf else f" >= {minimum:g}"
        raise ValueError(f"{name} must be a finite number{bound}, got {value!r}")


def check_params(est) -> None:
    """Refuses hyperparameters that would fail deep inside TensorFlow, or silently."""
    _real(est.lam, "lam", 0.0)
    _real(est.weight_decay, "weight_decay", 0.0)
    for name in ("uncertainty_exponent", "density_exponent", "error_floor"):
        _real(getattr(est, name), name, 0.0)
    for name in ("pretrain_epochs", "epochs", "batch_size", "reg_every"):
        _integer(getattr(est, name), name, 1)
    for name in ("cross_fit", "stratified", "find_label_issues", "drop_label_issues"):
        if not isinstance(getattr(est, name), bool | np.bool_):
            raise ValueError(f"{name} must be True or False, got {getattr(est, name)!r}")
    if est.drop_label_issues and not est.find_label_issues:
        raise ValueError("drop_label_issues=True needs find_label_issues=True")
    if est.num_classes is not None:
        _integer(est.num_classes, "num_classes", 2)
    sizes = est.hidden_layer_sizes
    if isinstance(sizes, numbers.Integral):
        sizes = (sizes,)
    if not sizes or any(not isinstance(s, numbers.Integral) or s < 1 for s in sizes):
        raise ValueError(f"hidden_layer_sizes must be one or more positive integers, got {sizes!r}")
    if est.verbose not in (0, 1, 2, "auto"):  # True and False are 1 and 0
        raise ValueError(f"verbose must be 0, 1, 2 or 'auto', got {est.verbose!r}")
    check_random_state(est.random_state)  # None, an int or a RandomState


def seed_from(random_state) -> int:
    """The int seed of one fit: the int itself, else one drawn from the RandomState."""
    if isinstance(random_state, numbers.Integral) and not isinstance(random_state, bool):
        return int(random_state)
    return int(check_random_state(random_state).randint(np.iinfo(np.int32).max))


# -- labels ----------------------------------------------------------------------------


def _label_array(y, name: str = "y") -> np.ndarray:
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] > 1:
        raise ValueError(f"{name} must be 1-D labels [N], got shape {y.shape} (one-hot?)")
    return y


def encode_labels(y) -> tuple[np.ndarray, np.ndarray]:
    """(classes, ids): the sorted distinct labels [C] and each label's index int64 [N]."""
    check_classification_targets(y)
    classes, ids = np.unique(y, return_inverse=True)
    if len(classes) < 2:
        raise ValueError(
            f"y has only one class ({label_name(classes[0])}): HAR needs at least 2 classes to "
            "classify and to estimate a tau for each"
        )
    return classes, ids.astype(np.int64).reshape(-1)


def label_name(label) -> str:
    """A label for a message: 'cat' for strings, 3 for numbers (not np.int64(3))."""
    return repr(str(label)) if isinstance(label, str | bytes) else str(label)


def check_splittable(ids, classes, weights=None) -> None:
    """Every class needs 2 examples (one per half) and, with weights, a weight > 0."""
    counts = np.bincount(ids, minlength=len(classes))
    few = np.flatnonzero(counts < 2)
    if few.size:
        c = int(few[0])
        raise ValueError(
            f"class {label_name(classes[c])} has {counts[c]} example; every class needs at "
            "least 2 so that it appears in both halves (one trains the ERM model, the "
            "other measures its error)"
        )
    if weights is not None:
        zero = np.flatnonzero(np.bincount(ids, weights=weights, minlength=len(classes)) <= 0)
        if zero.size:
            raise ValueError(
                f"class {label_name(classes[zero[0]])} has a total sample_weight of 0: HAR "
                "needs a weighted example of every class to estimate its tau"
            )


def ids_of(labels, classes: np.ndarray, *, name: str) -> np.ndarray:
    """int64 [N] indices into `classes` of known labels; ValueError naming the first other."""
    labels = _label_array(labels, name).reshape(-1)
    pos = np.clip(np.searchsorted(classes, labels), 0, len(classes) - 1)
    unknown = np.flatnonzero(classes[pos] != labels)
    if unknown.size:
        i = int(unknown[0])
        raise ValueError(
            f"{name}[{i}] = {label_name(labels[i])} is not one of the classes seen in fit"
        )
    return pos.astype(np.int64)


def encode_dataset(ds: tf.data.Dataset, classes: np.ndarray) -> tf.data.Dataset:
    """Maps the labels of an (x, y) dataset to their indices in `classes` (a lookup)."""
    label_dtype = ds.element_spec[1].dtype
    if label_dtype == tf.string:
        keys = tf.constant([c.decode() if isinstance(c, bytes) else str(c) for c in classes])
    elif label_dtype.is_integer:
        keys = tf.constant(classes.astype(np.int64))
    else:
        raise ValueError(f"dataset labels must be integers or strings, got {label_dtype.name}")
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(keys, tf.range(len(classes), dtype=tf.int64)), -1
    )

    def encode(x, y):
        key = y if label_dtype == tf.string else tf.cast(y, tf.int64)
        ids = table.lookup(key)
        check = tf.debugging.assert_non_negative(ids, message="a label not seen in fit")
        with tf.control_dependencies([check]):
            return x, tf.identity(ids)

    return ds.map(encode)


# -- the training set ------------------------------------------------------------------


class TrainingData:
    """The training set as arrays or an unbatched tf.data.Dataset, per subset.

    Attributes: `labels` (the given labels as passed), `classes` (sorted distinct
    labels [C]), `ids` (int64 [N] index of each label in `classes`: what the models
    train on), `weights` (float64 [N] or None), `example_shape` (one input's shape),
    `feature_names` (a DataFrame's string column names, else None).
    """

    def __init__(self, x, y, sample_weight, *, batch_size: int, seed: int, estimator=None):
        self.batch_size, self.seed = batch_size, seed
        self.feature_names = None
        if isinstance(x, tf.data.Dataset):
            self._from_dataset(x, y, sample_weight)
        else:
            self._from_arrays(x, y, sample_weight, estimator)
        self.classes, self.ids = encode_labels(self.labels)

    def _from_dataset(self, ds, y, sample_weight):
        if y is not None:
            raise ValueError("pass y inside the dataset, as (x, y) pairs, not beside it")
        if sample_weight is not None:
            raise ValueError("sample_weight is supported with array inputs, not a tf.data.Dataset")
        spec = ds.element_spec
        if not isinstance(spec, tuple) or len(spec) != 2:
            raise ValueError(f"the dataset must yield (x, y) pairs, got {spec}")
        self.dataset = ds.unbatch() if spec[1].shape.rank == 1 else ds
        self.example_shape = tuple(self.dataset.element_spec[0].shape)
        # One pass for the labels, which also checks the features (as check_X_y does
        # for arrays): a NaN need not spread through training to show in its output.
        floating = self.dataset.element_spec[0].dtype.is_floating

        def label_and_finite(x, label):
            finite = tf.reduce_all(tf.math.is_finite(x)) if floating else tf.constant(True)
            return label, finite

        labels, finite = [], []
        for batch, ok in self.dataset.map(label_and_finite).batch(4096).as_numpy_iterator():
            labels.append(batch)
            finite.append(ok)
        bad = np.flatnonzero(~np.concatenate(finite))
        if bad.size:
            raise ValueError(
                f"Input X contains NaN or infinity: example {int(bad[0])} of the dataset "
                f"({bad.size} example(s) in all)"
            )
        self.labels = _label_array(np.concatenate(labels))
        self.x, self.weights = None, None
        self.encoded = None  # built on first use, after the classes are known

    def _from_arrays(self, x, y, sample_weight, estimator):
        if y is None:
            raise ValueError(
                "HARClassifier requires y to be passed, but the target y is None (or pass "
                "a tf.data.Dataset of (x, y) pairs as x)"
            )
        columns = getattr(x, "columns", None)
        if columns is not None and all(isinstance(c, str) for c in columns):
            self.feature_names = np.asarray(columns, dtype=object)
        y = _label_array(y)
        x, y = check_X_y(
            x, y, allow_nd=True, dtype=np.float32, y_numeric=False, estimator=estimator
        )
        self.x, self.labels, self.dataset = x, y, None
        self.example_shape = tuple(x.shape[1:])
        self.weights = None
        if sample_weight is not None:
            w = check_array(
                sample_weight, ensure_2d=False, dtype=np.float64, input_name="sample_weight"
            )
            if w.shape != (len(y),):
                raise ValueError(
                    f"sample_weight must have shape ({len(y)},), one weight per example, "
                    f"got {w.shape}"
                )
            if not np.all(np.isfinite(w)) or np.any(w < 0):
                raise ValueError(f"sample_weight must be finite and >= 0, got {w.min()}")
            if not np.any(w > 0):
                raise ValueError("every sample_weight is zero: there is nothing to train on")
            self.weights = w

    def _subset(self, idx) -> tf.data.Dataset:
        if self.encoded is None:
            self.encoded = encode_dataset(self.dataset, self.classes)
        mask = np.zeros(len(self.ids), bool)
        mask[idx] = True
        keep = tf.constant(mask)
        return (
            self.encoded.enumerate()
            .filter(lambda i, _: tf.gather(keep, i))
            .map(lambda _, example: example)
            # Known length: Keras shows progress and does not warn of running out.
            .apply(tf.data.experimental.assert_cardinality(len(idx)))
        )

    def fit_inputs(self, idx) -> dict:
        """keyword arguments of `keras.Model.fit` for the examples at `idx`, shuffled."""
        if self.dataset is None:
            weights = None if self.weights is None else self.weights[idx].astype(np.float32)
            return dict(
                x=self.x[idx],
                y=self.ids[idx],
                sample_weight=weights,
                batch_size=self.batch_size,
                shuffle=True,
            )
        ds = self._subset(idx).shuffle(min(len(idx), 10_000), seed=self.seed)
        return dict(x=ds.batch(self.batch_size).prefetch(tf.data.AUTOTUNE), shuffle=False)

    def predict(self, model, idx) -> np.ndarray:
        """The model's logits for the examples at `idx`, in order."""
        if self.dataset is None:
            return predict_arrays(model, self.x[idx], self.batch_size)
        inputs = self._subset(idx).map(lambda x, _: x).batch(self.batch_size)
        return model.predict(inputs, verbose=0)


def predict_arrays(model, x: np.ndarray, batch_size: int) -> np.ndarray:
    """The model's outputs [N, ...] for an array x [N, ...], `batch_size` rows a step.

    Through `predict_on_batch`, not `predict`: for an array Keras's `predict` first
    builds a tf.data pipeline (traced map functions), which on a table of a few
    hundred rows costs more than the steps. The batches are the same consecutive
    slices, so the outputs are those of `predict`.
    """
    batches = [x[i : i + batch_size] for i in range(0, len(x), batch_size)]
    return np.concatenate([np.asarray(model.predict_on_batch(b)) for b in batches])


def validation_data(data, classes: np.ndarray):
    """Keras's validation_data with its labels mapped to indices into `classes`."""
    if data is None:
        return None
    if isinstance(data, tf.data.Dataset):
        spec = data.element_spec
        batched = isinstance(spec, tuple) and spec[1].shape.rank == 1
        return encode_dataset(data.unbatch() if batched else data, classes).batch(256)
    x, y, *rest = data
    return (x, ids_of(y, classes, name="validation y"), *rest)
