"""HARClassifier: Algorithm 1 of the paper as one scikit-learn estimator."""

from __future__ import annotations

import dataclasses
import numbers
import time
import warnings
from collections.abc import Callable, Sequence

import keras
import numpy as np
import sklearn.exceptions
import tensorflow as tf
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import validate_data

from har_tf import classifier_inputs as inputs
from har_tf import held_out, label_issues
from har_tf.har_model import HARModel
from har_tf.models import defaults

# The scikit-learn checks HARClassifier fails by design, with the reason (the
# argument `expected_failed_checks` of `sklearn.utils.estimator_checks.check_estimator`).
EXPECTED_FAILED_CHECKS = {
    "check_sample_weight_equivalence_on_dense_data": (
        "a weight of 2 is not the same as two copies for a network trained by "
        "minibatch SGD: the copies change the batches, the number of steps and the "
        "split into halves (the losses and tau do weight as copies)"
    ),
    "check_methods_sample_order_invariance": (
        "float32 predictions of a row change in the last bits (4e-8 to 1.2e-7 measured) "
        "with its position in a batch (oneDNN/Eigen kernels); the check's tolerance is "
        "1e-7 relative with an atol of 1e-9, and it draws one permutation, which may pass"
    ),
}


class NotFittedError(sklearn.exceptions.NotFittedError):
    """A HARClassifier method that needs a fitted model was called before `fit`."""


class HARClassifier(ClassifierMixin, BaseEstimator):
    """HAR (Cao et al., ICLR 2021) for your own data, as a scikit-learn classifier.

    `fit` runs Algorithm 1: it splits the training set into two halves stratified by
    label (seeded), pretrains an ERM model on half A (and, with `cross_fit`, another
    on half B), takes held-out class probabilities for the other half, measures the
    per-class error against the given labels, sets tau_c = err_c^a / n_c^b (divided
    by its maximum, as `har_tf.tau.estimate_tau`), then trains a fresh `HARModel`
    with that tau on all the data. From the same held-out probabilities it reports,
    through cleanlab, which examples look mislabelled (`label_issues_`). If every
    held-out prediction is right, the errors cannot be normalized (all 0): tau then
    comes from the class counts alone, n_c^-b / max with b = `density_exponent`
    (what any equal errors give),
    with a UserWarning.

    Cross-fitting: every training example gets exactly one held-out prediction, from
    the model that did not train on it, and the per-class error pools both
    directions. With `cross_fit=False` it is the authors' one-split estimate: half B
    only, one pretraining fewer.

    It is a scikit-learn estimator: any label values (`classes_` maps them), NumPy
    arrays, array-likes or pandas DataFrames as X, and it works in `clone`,
    `Pipeline`, `cross_val_score` and `GridSearchCV` (e.g. over `lam`).
    `check_estimator` passes except the checks in `EXPECTED_FAILED_CHECKS` (this
    module), each with its reason. Without `build_backbone` it builds one from the data: an MLP
    (`har_tf.models.mlp`, hidden activations tapped) for 2-D X, a ResNet-8
    (`har_tf.models.cifar_resnet`, its pre-affine BNs tapped) for images [N, H, W, C].

    Args:
      build_backbone: `() -> keras.Model`, a functional model mapping inputs to C
        logits, [B, ...] -> [B, C], C the number of distinct labels. Called once per
        model trained (2 or 3 times), each time after seeding, so it must build fresh
        layers. None: the default backbone above.
      lam: HAR's lambda for the final model (0: ERM, with tau still estimated).
      cross_fit: pretrain on both halves (see above).
      pretrain_epochs, epochs: epochs of each ERM pretraining and of the final fit.
      batch_size: examples per step, for every fit and prediction.
      optimizer: a Keras optimizer name ("adam"), an instance (each model gets a
        fresh copy from its config) or a `() -> optimizer` callable (a
        `functools.partial(keras.optimizers.Adam, 1e-2)` pickles; a lambda does not).
      random_state: int, None or a `numpy.random.RandomState`: the seed of the split
        and (through `keras.utils.set_random_seed`, which sets Python's, NumPy's and
        TensorFlow's global seeds) of every model's initial weights and shuffling.
        An int makes `fit` repeatable; the default 0 keeps the former `seed=0`.
      verbose: Keras's progress output of every training (0: silent, 1, 2, "auto").
      num_classes: optional check that y has this many distinct labels.
      tap_layers: as `HARModel`: layer names, or a callable `backbone -> names`
        (e.g. `har_tf.models.rnn_tap_layers`); None: the pre-affine BNs of your
        backbone, or the default backbone's taps.
      aggregation, scale, weight_decay, reg_every, checkpoint_layers: as `HARModel`
        (weight_decay also applies to the pretraining).
      uncertainty_exponent, density_exponent, error_floor: as
        `har_tf.tau.estimate_tau` (paper: 0.6, 0.4, 0).
      stratified: split each label's examples in half (else the whole set).
      find_label_issues: compute `label_issues_` and `noise_rate_` (needs the
        `label-issues` extra: cleanlab and pandas; checked before any training).
      drop_label_issues: train the final model only on the examples cleanlab does
        not flag (`cleanlab.filter.find_label_issues` on the held-out
        probabilities, CleanLearning's drop without its reweighting of the kept
        examples by 1 / (1 - noise rate)), so cleaning and HAR combine.
        Without cross-fitting only half B is scored, so only half B can be dropped.
        tau is still computed from the held-out errors of all scored examples,
        flagged ones included: it measures how noisy each class's labels are, which
        is what HAR adapts to, and dropping does not change that estimate.
      hidden_layer_sizes: hidden units of the default MLP (2-D X without
        `build_backbone`), as `MLPClassifier`'s.
      seed: deprecated alias of `random_state` (a FutureWarning; it wins when set).

    `fit`'s `sample_weight` weights each example's loss (cross-entropy and HAR's
    term, as `HARModel` applies it) in the pretrainings and the final fit, and
    tau's class counts and held-out errors (`har_tf.held_out.class_tau`), so that
    an integer weight counts as that many copies of the example everywhere except
    in the split of the halves, which is by example.

    Attributes (after `fit`; N training examples, C classes):
      classes_: [C] the distinct labels, sorted; class c of every [C] array below,
        and column c of probabilities, is `classes_[c]`.
      n_features_in_, feature_names_in_: as scikit-learn (the latter for a
        DataFrame with string column names); input_shape_: one example's shape.
      model_: the trained HARModel (predict / evaluate / save as any Keras model).
      tau_, class_error_, class_counts_, held_out_counts_: [C] tau, held-out error
        per given label, training examples and held-out examples per class (sums of
        weights with `sample_weight`).
      halves_: (half_a, half_b), int64 positions into the training set.
      held_out_proba_: float64 [N, C] held-out probabilities; rows of half A are
        NaN without cross-fitting.
      label_issues_: pandas.DataFrame, one row per held-out example (all N with
        cross-fitting, half B without), columns id (position in the training set),
        given_label, predicted_label (labels, as in y), label_quality,
        is_label_issue (see `har_tf.label_issues.find_label_issues`); None if not
        `find_label_issues`.
      noise_rate_: float64 [C] cleanlab's estimated noise rate per true class, beside
        HAR's `class_error_` (None if not `find_label_issues`).
      dropped_mask_, n_dropped_: bool [N], True where `drop_label_issues` left the
        example out of the final fit, and their number (all False / 0 otherwise).
      history_, pretrain_histories_: `History.history` dicts of the final fit and of
        each pretraining; pretrain_seconds_: wall time of each pretraining.

    Example (more, with a table and GridSearchCV: docs/CLASSIFIER.md):
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
        build_backbone: Callable[[], keras.Model] | None = None,
        *,
        lam: float = 10.0,
        cross_fit: bool = True,
        pretrain_epochs: int = 10,
        epochs: int = 10,
        batch_size: int = 128,
        optimizer="adam",
        random_state=0,
        verbose=0,
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
        drop_label_issues: bool = False,
        hidden_layer_sizes: Sequence[int] = (100,),
        seed: int | None = None,
    ):
        self.build_backbone = build_backbone
        self.lam = lam
        self.cross_fit = cross_fit
        self.pretrain_epochs = pretrain_epochs
        self.epochs = epochs
        self.batch_size = batch_size
        self.optimizer = optimizer
        self.random_state = random_state
        self.verbose = verbose
        self.num_classes = num_classes
        self.tap_layers = tap_layers
        self.aggregation = aggregation
        self.scale = scale
        self.weight_decay = weight_decay
        self.reg_every = reg_every
        self.checkpoint_layers = checkpoint_layers
        self.uncertainty_exponent = uncertainty_exponent
        self.density_exponent = density_exponent
        self.error_floor = error_floor
        self.stratified = stratified
        self.find_label_issues = find_label_issues
        self.drop_label_issues = drop_label_issues
        self.hidden_layer_sizes = hidden_layer_sizes
        self.seed = seed

    # -- building blocks -----------------------------------------------------------

    def _builder(self, example_shape, num_classes: int):
        """(build, taps): the backbone builder and its default tap layers."""
        if self.build_backbone is not None:
            return self.build_backbone, None
        sizes = self.hidden_layer_sizes
        sizes = (sizes,) if isinstance(sizes, numbers.Integral) else tuple(sizes)
        return defaults.default_backbone(example_shape, num_classes, hidden_layer_sizes=sizes)

    def _backbone(self, build, num_classes: int) -> keras.Model:
        backbone = build()
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
        if width != num_classes:
            raise ValueError(f"the backbone ends in {width} logits but y has {num_classes} classes")
        return backbone

    def _optimizer(self):
        opt = self.optimizer
        if isinstance(opt, keras.optimizers.Optimizer):
            return opt.__class__.from_config(opt.get_config())
        if callable(opt) and not isinstance(opt, str):
            return opt()
        return keras.optimizers.get(opt)

    def _new_model(self, build, default_taps, num_classes, seed, *, lam, tau=None) -> HARModel:
        keras.utils.set_random_seed(seed)
        backbone = self._backbone(build, num_classes)
        regularized = lam > 0
        taps = self.tap_layers if self.tap_layers is not None else default_taps
        taps = taps(backbone) if callable(taps) else taps
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

    def _seed(self) -> int:
        if self.seed is not None:
            warnings.warn(
                "HARClassifier(seed=) is deprecated; use random_state=",
                FutureWarning,
                stacklevel=3,
            )
            return int(self.seed)
        return inputs.seed_from(self.random_state)

    # -- fit -----------------------------------------------------------------------

    def fit(
        self,
        x,
        y=None,
        sample_weight=None,
        *,
        validation_data=None,
        callbacks=None,
        pretrain_callbacks=None,
        verbose=None,
    ) -> HARClassifier:
        """Runs Algorithm 1 (see the class docstring) and returns self.

        Args:
          x: inputs [N, ...]: an array, array-like or pandas DataFrame, or a
            `tf.data.Dataset` of (x, y) pairs, batched or not (it is read once for
            the labels, then per half; it must give the same examples in the same
            order each time, so shuffle it after, not before).
          y: [N] labels of any values (strings, integers); None with a dataset.
          sample_weight: float [N] >= 0 or None (arrays only; see the class docstring).
          validation_data: (x_val, y_val) with labels as in y, or a dataset; the
            final model's Keras validation data.
          callbacks, verbose: the final model's `keras.Model.fit` (verbose None:
            the `verbose` parameter, for every training).
          pretrain_callbacks: callbacks of each ERM pretraining.

        Raises:
          ValueError: bad hyperparameters, NaN or infinite features, one class only,
            a class with fewer than 2 examples, x and y of different lengths, a
            backbone that does not end in C logits (each message names which).
          ImportError: `find_label_issues` without cleanlab (names the extra).
        """
        inputs.check_params(self)
        if self.find_label_issues:
            label_issues.require_cleanlab()
        verbose = self.verbose if verbose is None else verbose
        seed = self._seed()
        data = inputs.TrainingData(
            x, y, sample_weight, batch_size=self.batch_size, seed=seed, estimator=self
        )
        classes, ids, weights = data.classes, data.ids, data.weights
        num_classes = len(classes)
        if self.num_classes is not None and num_classes != self.num_classes:
            raise ValueError(f"y has {num_classes} classes but num_classes is {self.num_classes}")
        inputs.check_splittable(ids, classes, weights)
        build, taps = self._builder(data.example_shape, num_classes)
        # The first model is built (and its backbone checked) before any training, so
        # a wrong backbone fails early without a build of its own.
        new_model = lambda **kw: self._new_model(build, taps, num_classes, seed, **kw)
        held = self._held_out(data, new_model, seed, callbacks=pretrain_callbacks, verbose=verbose)
        scored = held.scored
        wrong = np.argmax(held.proba[scored], axis=1) != ids[scored]
        if weights is not None:
            wrong &= weights[scored] > 0
        error_floor = self.error_floor
        if not wrong.any():
            # With every error 0, tau_c = 0 / n_c^b has no maximum to normalize by.
            # Equal errors, however small, give the density term alone, n_c^-b / max:
            # a floor of 1 puts every class there.
            warnings.warn(
                "every held-out prediction is right, so the errors say nothing about "
                "the classes' noise: tau comes from the class counts alone",
                UserWarning,
                stacklevel=2,
            )
            error_floor = 1.0
        result = held_out.class_tau(
            ids,
            ids[scored],
            np.argmax(held.proba[scored], axis=1),
            num_classes,
            uncertainty_exponent=self.uncertainty_exponent,
            density_exponent=self.density_exponent,
            error_floor=error_floor,
            train_weights=weights,
            held_out_weights=None if weights is None else weights[scored],
        )
        issues = rates = None
        dropped = np.zeros(len(ids), bool)
        if self.find_label_issues:
            issues = label_issues.find_label_issues(ids[scored], held.proba[scored], ids=scored)
            rates = label_issues.noise_rates(ids[scored], held.proba[scored])
            if self.drop_label_issues:
                dropped[scored] = issues["is_label_issue"].to_numpy()
            for column in ("given_label", "predicted_label"):
                issues[column] = classes[issues[column].to_numpy()]
        kept = np.flatnonzero(~dropped)
        if kept.size == 0:
            raise ValueError("cleanlab flagged every example: nothing is left to train on")
        model = new_model(lam=self.lam, tau=result.tau)
        history = model.fit(
            **data.fit_inputs(kept),
            epochs=self.epochs,
            validation_data=inputs.validation_data(validation_data, classes),
            callbacks=callbacks,
            verbose=verbose,
        ).history
        # Only now, so that a fit that fails leaves an earlier fit's results intact.
        self.model_, self.history_ = model, history
        self.classes_, self.input_shape_ = classes, data.example_shape
        self.n_features_in_ = data.example_shape[0]
        if data.feature_names is not None:
            self.feature_names_in_ = data.feature_names
        elif hasattr(self, "feature_names_in_"):
            del self.feature_names_in_
        self.pretrain_histories_, self.pretrain_seconds_ = held.histories, held.seconds
        self.halves_, self.held_out_proba_ = held.halves, held.proba
        self.tau_, self.class_error_ = result.tau, result.errors
        self.class_counts_, self.held_out_counts_ = result.counts, result.held_out
        self.label_issues_, self.noise_rate_ = issues, rates
        self.dropped_mask_, self.n_dropped_ = dropped, int(dropped.sum())
        return self

    def _held_out(self, data, new_model, seed, *, callbacks, verbose) -> _HeldOut:
        """Steps 1-2 of Algorithm 1: ERM on half A predicts half B (and, with
        cross_fit, the other way round)."""
        ids = data.ids
        halves = held_out.split_halves(
            np.arange(len(ids)), ids, seed=seed, stratified=self.stratified
        )
        half_a, half_b = halves
        directions = [(half_a, half_b)] + ([(half_b, half_a)] if self.cross_fit else [])
        proba = np.full((len(ids), len(data.classes)), np.nan)
        histories, seconds = [], []
        for name, (train_idx, predict_idx) in zip("AB", directions, strict=False):
            start = time.perf_counter()
            model = new_model(lam=0.0)
            fitted = model.fit(
                **data.fit_inputs(train_idx),
                epochs=self.pretrain_epochs,
                callbacks=callbacks,
                verbose=verbose,
            )
            proba[predict_idx] = held_out.softmax(data.predict(model, predict_idx))
            if not np.all(np.isfinite(proba[predict_idx])):
                raise FloatingPointError(
                    f"the ERM model pretrained on half {name} predicts non-finite "
                    "probabilities: a NaN or inf in the inputs, or a diverged training "
                    "(lower the learning rate)"
                )
            seconds.append(time.perf_counter() - start)
            histories.append(fitted.history)
        scored = np.sort(np.concatenate([d[1] for d in directions]))
        return _HeldOut(halves, proba, scored, histories, seconds)

    # -- inference -----------------------------------------------------------------

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "model_")

    def _inputs(self, x):
        """Checked inputs for the fitted model (scikit-learn's checks for arrays)."""
        if not self.__sklearn_is_fitted__():
            raise NotFittedError(
                f"this {type(self).__name__} is not fitted yet: call fit(x, y) first"
            )
        if isinstance(x, tf.data.Dataset):
            return x
        x = validate_data(self, x, reset=False, allow_nd=True, dtype=np.float32)
        expected = self.input_shape_
        fits = len(x.shape[1:]) == len(expected) and all(
            e is None or e == s for e, s in zip(expected, x.shape[1:], strict=True)
        )
        if not fits:
            raise ValueError(
                f"X has examples of shape {x.shape[1:]}, but {type(self).__name__} was "
                f"fitted on examples of shape {tuple(expected)}"
            )
        return x

    def predict_proba(self, x) -> np.ndarray:
        """float64 [N, C] class probabilities (softmax of the model's logits);
        column c is `classes_[c]`."""
        x = self._inputs(x)
        if isinstance(x, tf.data.Dataset):
            return held_out.softmax(self.model_.predict(x, verbose=0))
        return held_out.softmax(inputs.predict_arrays(self.model_, x, self.batch_size))

    def predict(self, x) -> np.ndarray:
        """[N] predicted labels (values of `classes_`)."""
        proba = self.predict_proba(x)
        return self.classes_[np.argmax(proba, axis=1)]

    def score(self, x, y=None, sample_weight=None) -> float:
        """Accuracy of `predict` against y, or against a dataset's labels."""
        if not isinstance(x, tf.data.Dataset):
            return super().score(x, y, sample_weight=sample_weight)
        self._inputs(x)
        ds = x.unbatch() if x.element_spec[1].shape.rank == 1 else x
        labels = np.concatenate(
            list(ds.map(lambda _, label: label).batch(4096).as_numpy_iterator())
        )
        features = ds.map(lambda features, _: features)
        # A known length: Keras does not warn of running out of data.
        features = features.apply(tf.data.experimental.assert_cardinality(len(labels)))
        pred = self.predict(features.batch(self.batch_size))
        return float(np.average(pred == labels, weights=sample_weight))


@dataclasses.dataclass(frozen=True)
class _HeldOut:
    """The held-out predictions of Algorithm 1's pretraining."""

    halves: tuple[np.ndarray, np.ndarray]  # positions of half A, half B
    proba: np.ndarray  # [N, C] softmax; NaN on rows no pretrained model predicted
    scored: np.ndarray  # sorted positions that hold a prediction
    histories: list[dict]  # each pretraining's Keras history
    seconds: list[float]  # each pretraining's wall time
