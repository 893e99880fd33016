"""The loss, ce and reg that HARModel logs: one step's global-batch values, tracked
so that a strategy's mean over replicas gives them back."""

from __future__ import annotations

import keras
import tensorflow as tf

from har_tf import objective
from har_tf.objective import StepGradients


def track_step(
    step: StepGradients,
    reg_weight,
    *,
    loss: keras.metrics.Mean,
    ce: keras.metrics.Mean,
    reg: keras.metrics.Mean,
) -> None:
    """Updates the `loss`, `ce` and `reg` trackers with one step's global-batch values.

    Under a strategy Keras logs the mean over replicas of each replica's own metric
    results. Each replica tracks its share of the global-batch value times the
    replica count, all with the same weight, so that the logs are the global values
    even when a batch splits unevenly (an epoch's end). `reg_weight` (a scalar, 1 on
    a regularized step and 0 on an ERM step) weighs this step's `reg` in its mean.
    """
    batch = tf.cast(tf.shape(step.y_pred)[0], tf.float32)
    (global_batch,) = objective.sum_over_replicas(batch)
    replica_weight = global_batch / float(objective.replicas())
    unscale = objective.unscale_loss_for_distribution
    loss.update_state(unscale(step.loss), sample_weight=replica_weight)
    ce.update_state(unscale(step.ce), sample_weight=replica_weight)
    value = step.reg
    reg_share = (
        tf.zeros(()) if value is None else value * tf.cast(batch / global_batch, value.dtype)
    )
    reg.update_state(
        unscale(reg_share),
        sample_weight=replica_weight * tf.cast(reg_weight, replica_weight.dtype),
    )
