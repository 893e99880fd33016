"""HAR's objective bound to one HARModel: the functions of `har_tf.objective` with
the model's settings, tables, optimizer and weights filled in.

`HARModel.objective` is the one `ModelObjective` of a model. Its ordinary step
(`HARModel.regularized_loss`) and its checkpointed step
(`har_tf.checkpointing.checkpointed_gradients`) both compute the objective through
it, so the two steps read each setting in one place.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import tensorflow as tf

from har_tf import objective
from har_tf.objective import Objective, Penalty


class ModelObjective:
    """The pieces of one HARModel's objective, each a function of tensors.

    Shapes: B examples on this replica, C classes; under a `tf.distribute` strategy
    every value is this replica's share, as in `har_tf.objective`. The model is read
    at each call: its optimizer (hence the loss scale) exists only after `compile`,
    and its tau and class-weight tables change between steps.

    Args:
      model: the HARModel; its public settings (`lam`, `scale`, `aggregation`,
        `epsilon`, `weight_decay`, `num_classes`), tables (`tau`, `class_weights`),
        `optimizer` and `trainable_weights` are read.
      tap_model: a view of the backbone's layers returning [logits, *tapped
        activations] (`har_tf.taps.tap_model`).
      compute_loss: the model's compiled loss,
        `compute_loss(x=, y=, y_pred=, sample_weight=, training=)` -> scalar.

    Attributes:
      tap_model: as given; it shares every variable of the backbone.
    """

    def __init__(self, model: keras.Model, tap_model: keras.Model, compute_loss: Callable):
        self._model = model
        self.tap_model = tap_model
        self._compute_loss = compute_loss

    def loss_weights(self, y, sample_weight):
        """Sample weights [B] applying the class weights with PyTorch's weighted-mean
        semantics, times the batch's own `sample_weight` [B] (`objective.loss_weights`)."""
        model = self._model
        return objective.loss_weights(model.class_weights, y, sample_weight, model.num_classes)

    def global_batch(self, y):
        """Examples in the global batch (all replicas), a float32 scalar."""
        return objective.global_batch(y, self._model.num_classes)

    def loss_scale(self):
        """The optimizer's loss scale (a scalar), or None without scaling or before compile."""
        return objective.loss_scale(getattr(self._model, "optimizer", None))

    def scale_loss(self, value):
        """`value` as the optimizer scales the loss (itself when not compiled)."""
        optimizer = self._model.optimizer
        return optimizer.scale_loss(value) if optimizer is not None else value

    def with_weight_decay(self, loss):
        """loss + weight_decay / 2 * sum ||w||^2 over the model's trainable weights."""
        model = self._model
        return objective.with_weight_decay(loss, model.trainable_weights, model.weight_decay)

    def ce(self, x, y, y_pred, sample_weight, training):
        """The compiled loss (L, cross-entropy for HAR) of `y_pred` [B, C]."""
        return self._compute_loss(
            x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=training
        )

    def squared_norms(self, grads, loss_scale, global_batch):
        """Per-example squared norms [B] of the taps' gradients of the loss times
        `loss_scale`, one per tap, at the model's `scale`."""
        return objective.squared_norms(
            grads, loss_scale=loss_scale, global_batch=global_batch, scale=self._model.scale
        )

    def penalty_from_squared(self, squared, y, tau, lam, global_batch) -> Penalty:
        """The penalty of strength `lam` from the taps' squared norms; `tau` [B] is the
        batch's own per-example tau, or None for the model's per-class table."""
        model = self._model
        example_tau = objective.example_tau(model.tau, y, tau, model.num_classes)
        return objective.penalty(
            squared,
            example_tau,
            lam=lam,
            global_batch=global_batch,
            aggregation=model.aggregation,
            epsilon=model.epsilon,
        )

    def penalty(self, grads, y, tau, lam, loss_scale) -> Penalty:
        """The penalty from the taps' gradients of the loss times `loss_scale`."""
        global_batch = self.global_batch(y)
        squared = self.squared_norms(grads, loss_scale, global_batch)
        return self.penalty_from_squared(squared, y, tau, lam, global_batch)

    def regularized_loss(self, x, y, sample_weight, tau, training, lam) -> Objective:
        """The objective on one batch with strength `lam` (`HARModel.regularized_loss`)."""
        sample_weight = self.loss_weights(y, sample_weight)
        if lam == 0.0:
            y_pred = self._model(x, training=training)
            ce = self.ce(x, y, y_pred, sample_weight, training)
            return Objective(y_pred, self.with_weight_decay(ce), ce, None, None)
        with tf.GradientTape() as inner:
            outputs = self.tap_model(x, training=training)
            y_pred, taps = outputs[0], list(outputs[1:])
            # Watch the tapped tensors themselves: their producers may not depend
            # on any variable (e.g. a BN right after a parameter-free layer).
            inner.watch(taps)
            ce = self.ce(x, y, y_pred, sample_weight, training)
            # Mixed precision: gradients w.r.t. float16 taps are small (1/B and
            # below) and underflow; differentiate the loss scaled as the outer step
            # scales it, and unscale in at least float32 (objective.squared_norms).
            loss_scale = self.loss_scale()
            inner_ce = objective.times(ce, loss_scale)
        grads = inner.gradient(inner_ce, taps, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        r, reg, reg_loss = self.penalty(grads, y, tau, lam, loss_scale)
        loss = tf.cast(ce, reg.dtype) + reg_loss
        return Objective(y_pred, self.with_weight_decay(loss), ce, reg, r)
