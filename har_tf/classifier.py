"""HARClassifier: Algorithm 1 of the paper in one scikit-learn-style `fit` call."""

from __future__ import annotations

import dataclasses
import inspect
import time
from collections.abc import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

from har_tf import held_out, label_issues
from har_tf.har_model import HARModel


class NotFittedError(ValueError, AttributeError):
    """A HARClassifier method that needs a fitted model was called before `fit`."""


class HARClassifier:
    """HAR (Cao et al., ICLR 2021) for your own backbone and data, in one `fit`.

    `fit` runs Algorithm 1: it splits the training set into two halves stratified by
    label (seeded), pretrains an ERM model on half A (and, with `cross_fit`, another
    on half B), takes held-out class probabilities for the other half, measures the
    per-class error against the given labels, sets tau_c = err_c^a / n_c^b (divided
    by its maximum, as `har_tf.tau.estimate_tau`), then trains a fresh `HARModel`
    with that tau on all the data. From the same held-out probabilities it reports,
    through cleanlab, which examples look mislabelled (`label_issues_`).

    Cross-fitting: every training example gets exactly one held-out prediction, from
    the model that did not train on it, and the per-class error pools both
    directions (wrong predictions over held-out examples of the class: the two
    halves' errors weighted by their sizes). With `cross_fit=False` it is the
    authors' one-split estimate: half B only, one pretraining fewer.

    Args:
      build_backbone: `() -> keras.Model`, a functional model mapping inputs to C
        logits, [B, ...] -> [B, C]. Called once per model trained (2 or 3 times),
        each time after seeding, so it must build fresh layers.
      lam: HAR's lambda for the final model (0: ERM, with tau still estimated).
      cross_fit: pretrain on both halves (see above).
      pretrain_epochs, epochs: epochs of each ERM pretraining and of the final fit.
      batch_size: examples per step, for every fit and prediction.
      optimizer: a Keras optimizer name ("adam"), an instance (each model gets a
        fresh copy from its config) or a `() -> optimizer` callable.
      seed: seeds the split, and (through `keras.utils.set_random_seed`, which sets
        Python's, NumPy's and TensorFlow's global seeds) every model's initial
        weights and shuffling.
      num_classes: optional check that the backbone ends in this many logits.
      tap_layers: as `HARModel`: layer names, or a callable `backbone -> names`
        (e.g. `har_tf.models.rnn_tap_layers`); None: the pre-affine BNs.
      aggregation, scale, weight_decay, reg_every, checkpoint_layers: as `HARModel`
        (weight_decay also applies to the pretraining).
      uncertainty_exponent, density_exponent, error_floor: as
        `har_tf.tau.estimate_tau` (paper: 0.6, 0.4, 0).
      stratified: split each label's examples in half (else the whole set).
      find_label_issues: compute `label_issues_` and `noise_rate_` (needs the
        `label-issues` extra: cleanlab and pandas; checked before any training).

    Attributes (after `fit`; N training examples, C classes):
      model_: the trained HARModel (predict / evaluate / save as any Keras model).
      tau_, class_error_, class_counts_, held_out_counts_: float/int [C] tau, held-out
        error per given label, training examples and held-out examples per class.
      halves_: (half_a, half_b), int64 positions into the training set.
      held_out_proba_: float64 [N, C] held-out probabilities; rows of half A are
        NaN without cross-fitting.
      label_issues_: pandas.DataFrame, one row per held-out example (all N with
        cross-fitting, half B without), columns id (position in the training set),
        given_label, predicted_label, label_quality, is_label_issue (see
        `har_tf.label_issues.find_label_issues`); None if not `find_label_issues`.
      noise_rate_: float64 [C] cleanlab's estimated noise rate per true class, beside
        HAR's `class_error_` (None if not `find_label_issues`).
      history_, pretrain_histories_: `History.history` dicts of the final fit and of
        each pretraining; pretrain_seconds_: wall time of each pretraining.
      classes_: int64 [C] 0 .. C - 1.

    Example:
    ```python
    def build_backbone():
        inputs = keras.Input((28, 28, 1))
        h = keras.layers.Conv2D(32, 3, name="conv")(inputs)
        h = har_tf.layers.pre_affine_batch_norm(h, name="bn")  # the tapped activation
        h = keras.layers.GlobalAveragePooling2D()(keras.layers.ReLU()(h))
        return keras.Model(inputs, keras.layers.Dense(10)(h))

    clf = HARClassifier(build_backbone, lam=10.0, pretrain_epochs=10, epochs=20)
    clf.fit(x_train, y_train, validation_data=(x_val, y_val))
    clf.tau_, clf.label_issues_.sort_values("label_quality").head()
    clf.score(x_test, y_test)
    ```
    """

    def __init__(
        self,
        build_backbone: Callable[[], keras.Model],
        *,
        lam: float = 10.0,
        cross_fit: bool = True,
        pretrain_epochs: int = 10,
        epochs: int = 10,
        batch_size: int = 128,
        optimizer="adam",
        seed: int = 0,
        num_classes: int | None = None,
        tap_layers: Sequence[str] | Callable | None = None,
        aggregation: str = "official",
        scale: str = "official",
        weight_decay: float = 0.0,
        reg_every: int = 1,
        checkpoint_layers: Sequence[str] | None = None,
        uncertainty_exponent: float = 0.6,
        density_exponent: float = 0.4,
        error_floor: float = 0.0,
        stratified: bool = True,
        find_label_issues: bool = True,
    ):
        for name, value in sorted(locals().items()):
            if name != "self":
                setattr(self, name, value)

    # -- scikit-learn protocol -----------------------------------------------------

    @classmethod
    def _param_names(cls) -> list[str]:
        return [p for p in inspect.signature(cls.__init__).parameters if p != "self"]

    def get_params(self, deep: bool = True) -> dict:
        """The constructor arguments, by name."""
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params) -> HARClassifier:
        """Sets constructor arguments (a refit is needed for them to take effect)."""
        unknown = sorted(set(params) - set(self._param_names()))
        if unknown:
            raise ValueError(
                f"unknown parameter(s) {unknown} for HARClassifier; known: {self._param_names()}"
            )
        for name, value in params.items():
            setattr(self, name, value)
        return self

    # -- building blocks -----------------------------------------------------------

    def _backbone(self) -> keras.Model:
        backbone = self.build_backbone()
        if not isinstance(backbone, keras.Model):
            raise TypeError(
                f"build_backbone must return a keras.Model, got {type(backbone).__name__}"
            )
        if len(backbone.outputs) != 1 or len(backbone.outputs[0].shape) != 2:
            shapes = [tuple(o.shape) for o in backbone.outputs]
            raise ValueError(
                f"the backbone must end in one [batch, C] tensor of logits, got outputs {shapes}"
            )
        width = backbone.outputs[0].shape[-1]
        if self.num_classes is not None and width != self.num_classes:
            raise ValueError(
                f"the backbone ends in {width} logits but num_classes is {self.num_classes}"
            )
        if width is None or width < 2:
            raise ValueError(f"the backbone must end in C >= 2 logits, got {width}")
        return backbone

    def _optimizer(self):
        opt = self.optimizer
        if isinstance(opt, keras.optimizers.Optimizer):
            return opt.__class__.from_config(opt.get_config())
        if callable(opt) and not isinstance(opt, str):
            return opt()
        return keras.optimizers.get(opt)

    def _new_model(self, *, lam: float, tau=None) -> HARModel:
        keras.utils.set_random_seed(self.seed)
        backbone = self._backbone()
        regularized = lam > 0
        taps = self.tap_layers(backbone) if callable(self.tap_layers) else self.tap_layers
        model = HARModel(
            backbone,
            lam=lam,
            tau=tau,
            tap_layers=taps if regularized else [],
            aggregation=self.aggregation,
            scale=self.scale,
            weight_decay=self.weight_decay,
            reg_every=self.reg_every if regularized else 1,
            checkpoint_layers=self.checkpoint_layers if regularized else None,
        )
        model.compile(
            optimizer=self._optimizer(),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
            jit_compile=False,  # as the pipeline: HAR under XLA is unverified
        )
        return model

    # -- fit -----------------------------------------------------------------------

    def fit(
        self,
        x,
        y=None,
        *,
        validation_data=None,
        callbacks=None,
        pretrain_callbacks=None,
        verbose="auto",
    ) -> HARClassifier:
        """Runs Algorithm 1 (see the class docstring) and returns self.

        Args:
          x: inputs [N, ...] (a NumPy array or anything with len and fancy
            indexing), or a `tf.data.Dataset` of (x, y) pairs, batched or not (it is
            read once for the labels, then per half; it must give the same
            examples in the same order each time, so shuffle it after, not before).
          y: int [N] class ids in [0, C) with arrays; None with a dataset.
          validation_data, callbacks, verbose: passed to the final model's
            `keras.Model.fit` (validation data as Keras takes it).
          pretrain_callbacks: callbacks of each ERM pretraining.

        Raises:
          ValueError: labels outside [0, C), x and y of different lengths, a class
            with fewer than 2 examples, a backbone that does not end in C logits.
          ImportError: `find_label_issues` without cleanlab (names the extra).
        """
        if self.find_label_issues:
            label_issues.require_cleanlab()
        data = _Data(x, y, batch_size=self.batch_size, seed=self.seed)
        num_classes = int(self._backbone().outputs[0].shape[-1])
        labels = data.labels
        _check_labels(labels, num_classes)
        held = self._held_out(data, num_classes, callbacks=pretrain_callbacks, verbose=verbose)
        scored = held.scored
        result = held_out.class_tau(
            labels,
            labels[scored],
            np.argmax(held.proba[scored], axis=1),
            num_classes,
            uncertainty_exponent=self.uncertainty_exponent,
            density_exponent=self.density_exponent,
            error_floor=self.error_floor,
        )
        issues = rates = None
        if self.find_label_issues:
            issues = label_issues.find_label_issues(labels[scored], held.proba[scored], ids=scored)
            rates = label_issues.noise_rates(labels[scored], held.proba[scored])
        model = self._new_model(lam=self.lam, tau=result.tau)
        history = model.fit(
            **data.fit_inputs(np.arange(len(labels))),
            epochs=self.epochs,
            validation_data=validation_data,
            callbacks=callbacks,
            verbose=verbose,
        ).history
        # Only now, so that a fit that fails leaves an earlier fit's results intact.
        self.model_, self.history_ = model, history
        self.pretrain_histories_, self.pretrain_seconds_ = held.histories, held.seconds
        self.halves_, self.held_out_proba_ = held.halves, held.proba
        self.tau_, self.class_error_ = result.tau, result.errors
        self.class_counts_, self.held_out_counts_ = result.counts, result.held_out
        self.classes_ = np.arange(num_classes)
        self.label_issues_, self.noise_rate_ = issues, rates
        return self

    def _held_out(self, data: _Data, num_classes: int, *, callbacks, verbose) -> _HeldOut:
        """Steps 1-2 of Algorithm 1: ERM on half A predicts half B (and, with
        cross_fit, the other way round)."""
        labels = data.labels
        halves = held_out.split_halves(
            np.arange(len(labels)), labels, seed=self.seed, stratified=self.stratified
        )
        half_a, half_b = halves
        directions = [(half_a, half_b)] + ([(half_b, half_a)] if self.cross_fit else [])
        proba = np.full((len(labels), num_classes), np.nan)
        histories, seconds = [], []
        for train_idx, predict_idx in directions:
            start = time.perf_counter()
            model = self._new_model(lam=0.0)
            fitted = model.fit(
                **data.fit_inputs(train_idx),
                epochs=self.pretrain_epochs,
                callbacks=callbacks,
                verbose=verbose,
            )
            proba[predict_idx] = held_out.softmax(data.predict(model, predict_idx))
            seconds.append(time.perf_counter() - start)
            histories.append(fitted.history)
        scored = np.sort(np.concatenate([d[1] for d in directions]))
        return _HeldOut(halves, proba, scored, histories, seconds)

    # -- inference -----------------------------------------------------------------

    def _fitted_model(self) -> HARModel:
        model = getattr(self, "model_", None)
        if model is None:
            raise NotFittedError("this HARClassifier is not fitted yet: call fit(x, y) first")
        return model

    def predict_proba(self, x) -> np.ndarray:
        """float64 [N, C] class probabilities (softmax of the model's logits)."""
        model = self._fitted_model()
        batching = {} if isinstance(x, tf.data.Dataset) else {"batch_size": self.batch_size}
        logits = model.predict(x, verbose=0, **batching)
        return held_out.softmax(logits)

    def predict(self, x) -> np.ndarray:
        """int64 [N] predicted class ids."""
        return np.argmax(self.predict_proba(x), axis=1).astype(np.int64)

    def score(self, x, y=None) -> float:
        """Accuracy of `predict` against y (or a dataset's labels)."""
        self._fitted_model()
        data = _Data(x, y, batch_size=self.batch_size, seed=self.seed)
        return float(np.mean(self.predict(data.inputs(np.arange(len(data.labels)))) == data.labels))


@dataclasses.dataclass(frozen=True)
class _HeldOut:
    """The held-out predictions of Algorithm 1's pretraining."""

    halves: tuple[np.ndarray, np.ndarray]  # positions of half A, half B
    proba: np.ndarray  # [N, C] softmax; NaN on rows no pretrained model predicted
    scored: np.ndarray  # sorted positions that hold a prediction
    histories: list[dict]  # each pretraining's Keras history
    seconds: list[float]  # each pretraining's wall time


def _check_labels(labels: np.ndarray, num_classes: int) -> None:
    """Every label in [0, C), every class present, each splittable into halves."""
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"y[{i}] = {labels[i]} is outside [0, {num_classes}) (the backbone has "
            f"{num_classes} logits)"
        )
    counts = np.bincount(labels, minlength=num_classes)
    if np.any(counts == 0):
        raise ValueError(
            f"class {int(np.argmax(counts == 0))} has no example in y: HAR estimates "
            f"a tau for each of the backbone's {num_classes} classes"
        )
    held_out.check_splittable(labels, num_classes)


def _labels(y) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"y must be 1-D class ids [N], got shape {y.shape} (one-hot?)")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"y must hold integer class ids, got dtype {y.dtype}")
    return y.astype(np.int64)


class _Data:
    """The training set as arrays or as an unbatched tf.data.Dataset, per subset."""

    def __init__(self, x, y, *, batch_size: int, seed: int):
        self.batch_size, self.seed = batch_size, seed
        if isinstance(x, tf.data.Dataset):
            if y is not None:
                raise ValueError("pass y inside the dataset, as (x, y) pairs, not beside it")
            spec = x.element_spec
            if not isinstance(spec, tuple) or len(spec) != 2:
                raise ValueError(f"the dataset must yield (x, y) pairs, got {spec}")
            self.dataset = x.unbatch() if spec[1].shape.rank == 1 else x
            ys = self.dataset.map(lambda _, label: label).batch(4096).as_numpy_iterator()
            self.labels = _labels(np.concatenate(list(ys)))
            self.x = None
        else:
            if y is None:
                raise ValueError("y is required when x is an array (or pass a tf.data.Dataset)")
            self.labels = _labels(y)
            x = np.asarray(x) if isinstance(x, list) else x
            if len(x) != len(self.labels):
                raise ValueError(f"x and y have different lengths: {len(x)} and {len(self.labels)}")
            self.x, self.dataset = x, None

    def _subset(self, idx) -> tf.data.Dataset:
        mask = np.zeros(len(self.labels), bool)
        mask[idx] = True
        keep = tf.constant(mask)
        return (
            self.dataset.enumerate()
            .filter(lambda i, _: tf.gather(keep, i))
            .map(lambda _, example: example)
            # Known length: Keras shows progress and does not warn of running out.
            .apply(tf.data.experimental.assert_cardinality(len(idx)))
        )

    def fit_inputs(self, idx) -> dict:
        """keyword arguments of `keras.Model.fit` for the examples at `idx`, shuffled."""
        if self.dataset is None:
            return dict(x=self.x[idx], y=self.labels[idx], batch_size=self.batch_size, shuffle=True)
        ds = self._subset(idx).shuffle(min(len(idx), 10_000), seed=self.seed)
        return dict(x=ds.batch(self.batch_size).prefetch(tf.data.AUTOTUNE), shuffle=False)

    def inputs(self, idx):
        """The inputs at `idx` (in order) for `predict`."""
        if self.dataset is None:
            return self.x[idx]
        return self._subset(idx).map(lambda x, _: x).batch(self.batch_size)

    def predict(self, model, idx) -> np.ndarray:
        """The model's logits for the examples at `idx`, in order."""
        batching = {} if self.dataset is not None else {"batch_size": self.batch_size}
        return model.predict(self.inputs(idx), verbose=0, **batching)
