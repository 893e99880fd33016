"""The HAR objective as functions of tensors: loss weights, per-example tau, the
taps' squared norms, the penalty and weight decay.

    loss = L + lam * mean_i(tau[y_i] * R_i) + weight_decay / 2 * sum ||w||^2

`HARModel.regularized_loss` (the ordinary step) and `checkpointing.checkpointed_gradients`
(the recomputing step) both build their objective from these functions; R_i itself
is `regularizer.penalty_from_squared_norms`. Under a `tf.distribute` strategy every
function here works on one replica's slice of the global batch and returns that
replica's share, so that the replicas' shares add up to the global-batch value, as
Keras's compiled losses do. Shapes: B examples on this replica, C classes.
"""

from __future__ import annotations

from typing import NamedTuple

import keras
import tensorflow as tf

from har_tf import regularizer

SCALES = ("official", "per_example")


class Objective(NamedTuple):
    """The pieces of the HAR objective on one (per-replica) batch.

    Attributes:
      y_pred: the logits, [B, C].
      loss: what the optimizer minimizes; under a strategy this replica's share of
        the global-batch objective.
      ce: the compiled loss, so scaled.
      reg: mean_i(tau_i * R_i) over this replica's examples (unscaled, at least
        float32); None for ERM.
      r: R as a [B] tensor; None for ERM.
    """

    y_pred: tf.Tensor
    loss: tf.Tensor
    ce: tf.Tensor
    reg: tf.Tensor | None
    r: tf.Tensor | None


class StepGradients(NamedTuple):
    """One step's objective and the gradients of its (scaled) loss.

    `gradients` is a list aligned with the model's trainable weights; the other
    fields are those of `Objective`.
    """

    y_pred: tf.Tensor
    loss: tf.Tensor
    ce: tf.Tensor
    reg: tf.Tensor | None
    gradients: list


class Penalty(NamedTuple):
    """R [B], reg (the mean of tau * R on this replica) and this replica's share of
    lam * (mean of tau * R over the global batch), the term added to the loss."""

    r: tf.Tensor
    reg: tf.Tensor
    reg_loss: tf.Tensor


def replicas() -> int:
    """Replicas in sync under the current `tf.distribute` strategy (1 without one)."""
    return tf.distribute.get_strategy().num_replicas_in_sync


def scale_loss_for_distribution(value):
    """Divides a per-replica loss term by the replica count, as Keras's losses do."""
    n = replicas()
    return value / n if n > 1 else value


def unscale_loss_for_distribution(value):
    """The inverse of `scale_loss_for_distribution`."""
    n = replicas()
    return value * n if n > 1 else value


def times(value, loss_scale):
    """value * loss_scale (a scalar tensor, or None for no scaling), in value's dtype."""
    return value if loss_scale is None else value * tf.cast(loss_scale, value.dtype)


def sum_over_replicas(*values):
    """Sums of tensors over the replicas in sync (inside `strategy.run`), else themselves."""
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return values
    return tuple(ctx.all_reduce(tf.distribute.ReduceOp.SUM, list(values)))


def class_ids(y, num_classes: int):
    """Integer labels [B] from sparse labels or one-hot [B, C] float labels."""
    y = tf.convert_to_tensor(y)
    if y.shape.rank == 2 and y.shape[-1] == num_classes and y.dtype.is_floating:
        y = tf.argmax(y, axis=-1)  # one-hot labels
    return tf.reshape(tf.cast(y, tf.int32), [-1])


def global_batch(y, num_classes: int):
    """Examples in the global batch (all replicas), a float32 scalar."""
    (total,) = sum_over_replicas(tf.cast(tf.size(class_ids(y, num_classes)), tf.float32))
    return total


def loss_weights(class_weights, y, sample_weight, num_classes: int):
    """Sample weights [B] that turn Keras's sum(w l) / B into sum(w l) / sum(w).

    `class_weights` [C] are DRW's per-class weights, applied with PyTorch's
    weighted-mean semantics (`cross_entropy(weight=w)`), times the batch's own
    `sample_weight` [B] if given. Under a multi-replica strategy sum(w) runs over
    the global batch: Keras divides each replica's sum(w l) by its own batch size
    and by the replica count, so the replicas' losses add up to the weighted mean
    over the global batch however it is split (with equal weights: the global-batch
    mean).
    """
    w = tf.gather(tf.cast(class_weights, tf.float32), class_ids(y, num_classes))
    batch = tf.cast(tf.shape(w)[0], tf.float32)
    (total,) = sum_over_replicas(tf.reduce_sum(w))
    w = w * (batch * float(replicas())) / tf.maximum(total, 1e-12)
    if sample_weight is not None:
        w = w * tf.reshape(tf.cast(sample_weight, tf.float32), [-1])
    return w


def example_tau(tau_table, y, tau, num_classes: int):
    """tau_i for each example [B]: the batch's own `tau`, else `tau_table` [C] at y_i."""
    if tau is not None:
        return tf.reshape(tf.cast(tau, tf.float32), [-1])
    return tf.gather(tf.cast(tau_table, tf.float32), class_ids(y, num_classes))


def loss_scale(optimizer):
    """The loss scale that `optimizer.scale_loss` applies (a scalar), or None if none.

    A `keras.optimizers.LossScaleOptimizer` (which `compile` wraps around the
    optimizer under "mixed_float16") scales by its current dynamic scale; any
    optimizer may scale by a static `loss_scale_factor`.
    """
    if optimizer is None or not (
        isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
        or optimizer.loss_scale_factor is not None
    ):
        return None
    return optimizer.scale_loss(tf.constant(1.0))


def squared_norms(grads, *, loss_scale, global_batch, scale: str):
    """Per-example squared norms of the taps' gradients, one [B] tensor per tap.

    `grads` are gradients of the loss times `loss_scale` (None: unscaled); they are
    unscaled here, and with `scale="per_example"` multiplied by the global batch
    size (R of each example's own loss instead of the batch mean's).
    """
    if loss_scale is not None:
        grads = [regularizer.at_least_float32(g) for g in grads]
        grads = [g / tf.cast(loss_scale, g.dtype) for g in grads]
    if scale == "per_example":
        # ce is a mean over the global batch, so each example's slice carries
        # 1/global_batch whatever the split.
        grads = [g * tf.cast(global_batch, g.dtype) for g in grads]
    return regularizer.squared_norms(grads)


def penalty(sq, tau, *, lam, global_batch, aggregation: str, epsilon: float) -> Penalty:
    """The penalty from the taps' `squared_norms` and each example's tau [B]."""
    r = regularizer.penalty_from_squared_norms(sq, aggregation=aggregation, epsilon=epsilon)
    tau_r = tf.cast(tau, r.dtype) * r
    # The mean over this replica's examples (0 for a replica left without any).
    reg = tf.math.divide_no_nan(tf.reduce_sum(tau_r), tf.cast(tf.size(tau_r), r.dtype))
    # This replica's share of lam * (mean of tau * R over the global batch).
    reg_loss = lam * tf.reduce_sum(tau_r) / tf.cast(global_batch, r.dtype)
    return Penalty(r, reg, reg_loss)


def with_weight_decay(loss, weights, weight_decay: float):
    """loss + weight_decay / 2 * sum ||w||^2 over `weights` (this replica's share)."""
    if weight_decay == 0.0:
        return loss
    loss = regularizer.at_least_float32(loss)
    l2 = tf.add_n([tf.reduce_sum(tf.square(tf.cast(w, loss.dtype))) for w in weights])
    return loss + scale_loss_for_distribution(0.5 * weight_decay * l2)
