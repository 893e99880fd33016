"""HARModel: a Keras model whose train step adds HAR's adaptive Jacobian regularizer.

This module holds the model's step dispatch and serialization. Its objective is in
`har_tf.model_objective` (bound to the model; the formulas in `har_tf.objective`),
the checkpointed step in `har_tf.checkpointing`, the checks of its options, tables
and batches in `har_tf.model_inputs`, its logged metrics in `har_tf.step_metrics`.
A step of one's own (the checkpointed one, a test, a check) reads the model through
`HARModel.objective`, `HARModel.segments` and `HARModel.step_gradients`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf

from har_tf import model_inputs
from har_tf.checkpointing import Segments, checkpointed_gradients
from har_tf.model_objective import ModelObjective
from har_tf.objective import SCALES, Objective, StepGradients, replicas
from har_tf.step_metrics import track_step
from har_tf.taps import check_twice_differentiable, default_tap_layers, tap_model

__all__ = ["SCALES", "HARModel", "default_tap_layers"]


@keras.saving.register_keras_serializable(package="har_tf")
class HARModel(keras.Model):
    """A classifier trained with HAR (Cao et al., ICLR 2021).

    The training loss of a batch of B examples is

        loss = L + lam * mean_i(tau[y_i] * R_i) + weight_decay / 2 * sum ||w||^2

    where L is the compiled loss (batch-mean cross-entropy for HAR) and R_i is the
    per-example norm of the gradient of L w.r.t. the tapped hidden activations,
    computed by double backpropagation: an inner `tf.GradientTape` gives dL/dh with
    its graph kept, and the outer tape differentiates the whole loss, R included
    (`har_tf.objective` has the formula's pieces). With `lam == 0` the step is plain
    ERM: no inner tape, no second-order graph, no extra cost.

    Every layer between the inputs and the loss must be twice differentiable: use
    `har_tf.layers.BatchNormalization` (see `har_tf.layers.convert_batch_norms`) and
    RNNs with `use_cudnn=False`; both are checked when `lam > 0`. Mixed precision:
    under "mixed_float16" the inner gradient is taken of the loss scaled by the
    optimizer's loss scale and unscaled in float32 before the norms; a step whose
    scaled inner gradient overflows reports an infinite `reg` and `loss` and is
    skipped by the `LossScaleOptimizer`. Distributed training (docs/DISTRIBUTED.md):
    create and compile under `strategy.scope()`; with synchronized BNs one step on
    several replicas equals one step on one device over the same global batch.
    `jit_compile=True` under a multi-replica strategy raises a ValueError.

    Args:
      backbone: a functional `keras.Model` mapping inputs to logits.
      lam: the overall regularization strength lambda (a Python float; changing it
        needs a new compile).
      tau: per-class strengths, a sequence of C floats (C = width of the logits).
        None means uniform regularization (tau = 1). A batch may instead carry
        per-example tau: `(x, y, {"tau": tau_b, "sample_weight": w_b})`.
      tap_layers: names of backbone layers whose outputs are regularized. None:
        every `BatchNormalization(center=False, scale=False)` layer (the pre-affine
        BNs of `har_tf.models`), as in the authors' code.
      aggregation: "official" (authors' code: sum over layers of the per-example
        norms) or "paper" (root of the sum of squared norms).
      scale: "official": gradients of the batch-mean loss, so lambda means what it
        means in the authors' code (their README: lambda 10 at B = 128).
        "per_example": gradients of each example's own loss (R times the global
        batch size), the scale of the paper's "largest lambda * tau = 0.1".
      weight_decay: coupled L2 on every trainable variable, the `weight_decay` of
        `torch.optim.SGD` that the authors use (Keras optimizers' own is decoupled).
      epsilon: added under the norms' square roots to keep gradients finite at 0.
      reg_every: an opt-in approximation for speed (default 1: the exact objective
        at every step). With k > 1 the regularizer is applied on every k-th step
        only (optimizer.iterations % k == 0) with strength k * lam, and the other
        steps are ERM steps; the logged `reg` averages the regularized steps. A
        custom `strategy.run(model.train_step, ...)` loop picks each step's kind:
        `train_step(data, regularized=...)`, a Python bool (docs/DISTRIBUTED.md).
        Its cost and accuracy: docs/PERFORMANCE.md.
      checkpoint_layers: an opt-in trade of time for memory, with the exact
        objective: names of layers whose outputs cut the backbone into segments
        (e.g. `har_tf.models.block_output_layers(backbone)`). A regularized step
        then keeps only the tensors at the cuts and recomputes each segment twice
        (`har_tf.checkpointing`). Each cut must separate the graph (no skip
        connection across it), else a ValueError names the segment; activity
        regularizers are refused. Its cost: docs/PERFORMANCE.md.
      **kwargs: forwarded to `keras.Model`.

    Example:
    ```python
    backbone = har_tf.models.cifar_resnet(depth=32)
    model = HARModel(backbone, lam=10.0, tau=tau_per_class, weight_decay=1e-4)
    model.compile(
        optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(train_ds, epochs=120)  # logs loss, ce, reg, accuracy
    ```
    Your own backbone: `HARModel(backbone, lam=1.0, tap_layers=["my_relu", ...])`;
    the paper's other models name their taps with `har_tf.models.rnn_tap_layers`
    and `har_tf.models.bn_tap_layers`.

    Reference:
      Cao, Chen, Ma, Gaidon, Ma. Heteroskedastic and Imbalanced Deep Learning with
      Adaptive Regularization. ICLR 2021. https://arxiv.org/abs/2006.15766
    """

    def __init__(
        self,
        backbone: keras.Model,
        *,
        lam: float = 0.0,
        tau: Sequence[float] | None = None,
        tap_layers: Sequence[str] | None = None,
        aggregation: str = "official",
        scale: str = "official",
        weight_decay: float = 0.0,
        epsilon: float = 1e-20,
        reg_every: int = 1,
        checkpoint_layers: Sequence[str] | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        model_inputs.check_options(lam, aggregation, scale, weight_decay, epsilon, reg_every)
        self.backbone = backbone
        self.lam = float(lam)
        self.aggregation = aggregation
        self.scale = scale
        self.weight_decay = float(weight_decay)
        self.epsilon = float(epsilon)
        self.reg_every = int(reg_every)
        self.num_classes = int(backbone.outputs[0].shape[-1])

        self.tap_layers = list(default_tap_layers(backbone) if tap_layers is None else tap_layers)
        if self.lam > 0 and not self.tap_layers:
            raise ValueError(
                "lam > 0 but the backbone has no tapped activations: pass tap_layers "
                "or build the model with har_tf.layers.pre_affine_batch_norm"
            )
        if self.lam > 0:
            check_twice_differentiable(backbone)
        # Views of the same layers (the taps' view, in the objective, and the segments
        # of a checkpointed step), set past Keras's attribute tracking: they share every
        # variable of `backbone` and must not be saved or counted twice. Keras's own
        # step calls `_compute_loss`, which also serves overrides without `training`.
        taps = tap_model(backbone, self.tap_layers)
        object.__setattr__(self, "_objective", ModelObjective(self, taps, self._compute_loss))
        self.checkpoint_layers = None if checkpoint_layers is None else list(checkpoint_layers)
        cuts = self.checkpoint_layers
        segments = None if cuts is None else Segments(backbone, cuts, self.tap_layers)
        object.__setattr__(self, "_segments", segments)

        tau = model_inputs.tau_table(
            np.ones(self.num_classes) if tau is None else tau, self.num_classes
        )
        self.tau = self.add_weight(
            name="tau",
            shape=(self.num_classes,),
            initializer=keras.initializers.Constant(tau),
            trainable=False,
        )
        # Every variable exists now (the backbone is functional, hence built).
        self.built = True
        # Per-class weights of the loss (DRW); ones = unweighted. Applied with
        # PyTorch's weighted-mean semantics, see `objective.loss_weights`.
        self.class_weights = self.add_weight(
            name="class_weights",
            shape=(self.num_classes,),
            initializer="ones",
            trainable=False,
        )
        self.ce_tracker = keras.metrics.Mean(name="ce")
        self.reg_tracker = keras.metrics.Mean(name="reg")

    @property
    def objective(self) -> ModelObjective:
        """This model's objective piece by piece (a `har_tf.model_objective.ModelObjective`:
        loss weights, loss scale, weight decay, the taps' norms, the penalty, and
        `tap_model`, the view of the backbone that also returns the tapped activations),
        so that a step of one's own (the checkpointed step, a finite-difference check)
        computes the objective of `regularized_loss` from the same pieces."""
        return self._objective

    @property
    def segments(self) -> Segments | None:
        """The backbone cut at `checkpoint_layers` (`har_tf.checkpointing.Segments`),
        which the checkpointed step recomputes; None without checkpoint_layers."""
        return self._segments

    def set_tau(self, tau: Sequence[float]) -> None:
        """Replaces the per-class tau table (no retracing needed)."""
        self.tau.assign(model_inputs.tau_table(tau, self.num_classes))

    def set_class_weights(self, weights: Sequence[float] | None) -> None:
        """Weights the loss per class from now on (None: unweighted). No retracing.

        The weighted loss is sum_i w[y_i] l_i / sum_i w[y_i], the semantics of
        `torch.nn.functional.cross_entropy(weight=w)` that the authors' DRW uses.
        """
        self.class_weights.assign(model_inputs.class_weight_table(weights, self.num_classes))

    def call(self, inputs, training=None):
        return self.backbone(inputs, training=training)

    def regularized_loss(
        self, x, y, sample_weight=None, tau=None, training=True, lam=None
    ) -> Objective:
        """The pieces of the HAR objective on one (per-replica) batch: an `Objective`.

        `lam` overrides `self.lam` (a Python float; 0 gives the ERM objective, with
        `reg` and `r` None). The result unpacks as (y_pred, loss, ce, reg, r).
        """
        lam = self.lam if lam is None else float(lam)
        return self._objective.regularized_loss(x, y, sample_weight, tau, training, lam)

    # -- training --------------------------------------------------------------------

    def train_step(self, data, regularized=None):
        """One training step (Keras's hook), or one of a chosen kind.

        `regularized` (a Python bool, only with reg_every > 1) makes this a
        regularized step with reg_every * lam (True) or an ERM step (False), for a
        custom `strategy.run` loop, which cannot leave the choice to the step: under
        several replicas it would be a tf.cond around cross-replica sums. Such a
        loop traces one function per kind and passes the kind that
        `is_regularized_step(optimizer.iterations)` gives. None (what `fit` passes):
        the kind follows from the step count.
        """
        self._check_step_options(regularized)
        x, y, sample_weight, tau = model_inputs.unpack_batch(data)
        step, reg_weight = self._step(x, y, sample_weight, tau, regularized)
        self.optimizer.apply_gradients(zip(step.gradients, self.trainable_weights, strict=True))
        # `_loss_tracker` is the "loss" Mean that `compile` creates and `fit` resets;
        # Keras exposes it only through `metrics`, and its own train_step updates it so.
        track_step(
            step, reg_weight, loss=self._loss_tracker, ce=self.ce_tracker, reg=self.reg_tracker
        )
        return self.compute_metrics(x, y, step.y_pred, sample_weight=sample_weight)

    @property
    def alternates_steps(self) -> bool:
        """Whether steps alternate between regularized and ERM (reg_every > 1, lam > 0).

        Otherwise every step is of one kind, regularized with lam (ERM with lam 0).
        """
        return self.reg_every > 1 and self.lam > 0.0

    def is_regularized_step(self, iterations):
        """Whether the step taken at `optimizer.iterations == iterations` is a
        regularized one (with reg_every * lam) when `alternates_steps`: every
        reg_every-th step, from the first. An int gives a bool, a tensor a bool tensor.
        """
        return iterations % self.reg_every == 0

    def _check_step_options(self, regularized) -> None:
        if regularized is not None:
            if not isinstance(regularized, bool):
                raise ValueError(
                    "train_step(regularized=...) takes a Python bool (each kind of step "
                    f"is traced on its own), got {type(regularized).__name__}"
                )
            if self.reg_every == 1 and not regularized:
                raise ValueError(
                    "train_step(regularized=False) asks for an ERM step, but reg_every=1 "
                    "regularizes every step; set reg_every > 1 or leave regularized=None"
                )
        if self.jit_compile and replicas() > 1:
            raise ValueError(
                "jit_compile=True fails under a multi-replica tf.distribute strategy in "
                "TensorFlow 2.21 (the XLA step reads a variable of one replica from another "
                "replica's device), and compiling only the gradient computation fails too "
                "(it holds cross-replica sums, which a nested tf.function may not). "
                "Compile with jit_compile='auto' (XLA off under tf.distribute) or False; "
                "see docs/DISTRIBUTED.md."
            )

    def _step(self, x, y, sample_weight, tau, regularized):
        """(StepGradients, reg_weight) of the kind of step this is.

        reg_weight is 1 on a regularized step, 0 on an ERM step: the weight of this
        step's `reg` in the logged mean.
        """
        if not self.alternates_steps:
            step = self.step_gradients(x, y, sample_weight, tau, self.lam)
            return step, tf.constant(1.0)
        if regularized is not None:
            # The kind is chosen in Python, by `make_train_function` under several
            # replicas (a cross-replica sum cannot sit inside tf.cond) or by the
            # caller; traced once per kind.
            lam = self.lam * self.reg_every if regularized else 0.0
            step = self.step_gradients(x, y, sample_weight, tau, lam)
            reg = tf.zeros(()) if step.reg is None else step.reg
            return step._replace(reg=reg), tf.constant(1.0 if regularized else 0.0)
        if replicas() > 1:
            raise ValueError(
                "reg_every > 1 under a multi-replica strategy needs each step's kind "
                "chosen outside the step (a cross-replica sum cannot sit inside "
                "tf.cond). Keras's fit / train_on_batch do that. A custom "
                "strategy.run(model.train_step) loop, such as the "
                "MultiWorkerMirroredStrategy loop of docs/DISTRIBUTED.md, passes "
                "train_step(data, regularized=is_regularized_step(optimizer.iterations)) "
                "as a Python bool, from a function traced once per kind."
            )
        reg_weight = tf.cast(self.is_regularized_step(self.optimizer.iterations), tf.float32)

        def har_step():
            y_pred, loss, ce, reg, grads = self.step_gradients(
                x, y, sample_weight, tau, self.lam * self.reg_every
            )
            return y_pred, loss, ce, tf.cast(reg, tf.float32), grads

        def erm_step():
            y_pred, loss, ce, _, grads = self.step_gradients(x, y, sample_weight, tau, 0.0)
            return y_pred, loss, ce, tf.zeros(()), grads

        return StepGradients(*tf.cond(reg_weight > 0, har_step, erm_step)), reg_weight

    def make_train_function(self, force=False):
        """Keras's train function; with reg_every > 1 on several replicas, two of them.

        One device chooses each step's kind with tf.cond inside the step. Under a
        multi-replica strategy the regularized step holds cross-replica sums, which
        TensorFlow does not allow inside tf.cond, so two train functions are traced,
        one of `train_step(regularized=True)` (k * lam) and one of
        `train_step(regularized=False)` (ERM), and each call runs the one that
        `is_regularized_step(optimizer.iterations)` picks.
        """
        if self.train_function is not None and not force:
            return self.train_function
        if not self.alternates_steps or self.distribute_strategy.num_replicas_in_sync == 1:
            return super().make_train_function(force=force)
        if self.steps_per_execution != 1:
            raise ValueError(
                "reg_every > 1 under a multi-replica strategy needs steps_per_execution=1 "
                f"(got {self.steps_per_execution}): each step's kind is chosen between calls"
            )
        # Keras's public make_train_function always wraps `self.train_step` as it is;
        # `_make_function` (Keras 3's TensorFlow trainer, which make_train_function
        # calls) wraps a given step function, here one bound to its kind.
        functions = {
            kind: self._make_function(functools.partial(self.train_step, regularized=kind))
            for kind in (True, False)
        }

        def train_function(iterator):
            regularized = self.is_regularized_step(int(self.optimizer.iterations.numpy()))
            return functions[regularized](iterator)

        self.train_function = train_function
        return train_function

    def step_gradients(self, x, y, sample_weight=None, tau=None, lam=None) -> StepGradients:
        """One step's objective with strength `lam` (None: `self.lam`) and the
        gradients of its loss, as the optimizer scales it, w.r.t. the trainable
        weights: what `train_step` applies, for a test or a custom loop to inspect.
        With `checkpoint_layers` and `lam` > 0 the checkpointed step computes it."""
        lam = self.lam if lam is None else float(lam)
        if self._segments is not None and lam > 0:
            return checkpointed_gradients(self, x, y, sample_weight, tau, lam)
        with tf.GradientTape() as tape:
            y_pred, loss, ce, reg, _ = self.regularized_loss(x, y, sample_weight, tau, lam=lam)
            scaled = self._objective.scale_loss(loss)
        return StepGradients(y_pred, loss, ce, reg, tape.gradient(scaled, self.trainable_weights))

    def test_step(self, data):
        x, y, sample_weight, _ = model_inputs.unpack_batch(data)
        return super().test_step((x, y, sample_weight))

    def predict_step(self, data):
        x, _, _, _ = model_inputs.unpack_batch(data)
        return self(x, training=False)

    # -- serialization ---------------------------------------------------------------

    def get_config(self):
        config = super().get_config()
        config.update(
            backbone=keras.saving.serialize_keras_object(self.backbone),
            lam=self.lam,
            tau=[float(t) for t in keras.ops.convert_to_numpy(self.tau)],
            tap_layers=list(self.tap_layers),
            aggregation=self.aggregation,
            scale=self.scale,
            weight_decay=self.weight_decay,
            epsilon=self.epsilon,
            reg_every=self.reg_every,
            checkpoint_layers=self.checkpoint_layers,
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        return cls(**config)
