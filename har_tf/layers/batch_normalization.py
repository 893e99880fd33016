"""BatchNormalization whose training-mode statistics are differentiable twice."""

import keras
import tensorflow as tf
from keras import ops


@keras.saving.register_keras_serializable(package="har_tf")
class BatchNormalization(keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization` that double backpropagation gets right.

    HAR differentiates the gradient of the loss, so every BatchNormalization the
    loss flows through must be differentiable twice. Keras's layer computes its
    training-mode batch statistics with `tf.nn.moments`, which puts a
    `stop_gradient` on the mean inside the variance. That leaves first derivatives
    unchanged (the dropped term is zero) but removes a term from second
    derivatives, so the gradient of HAR's regularizer is wrong (measured: 2-7%
    relative error against finite differences on a two-BN network, and a non-zero
    gradient for a bias feeding a BN, which cannot affect the loss).

    This subclass computes the mean and the (biased) variance with plain ops, so
    both orders are exact; everything else, including saving, moving statistics and
    `synchronized=True` (whose cross-replica path has no stop_gradient), is Keras's.
    Inputs with a mask fall back to Keras's computation.

    Args: those of `keras.layers.BatchNormalization`.
    """

    def _moments(self, inputs, mask):
        if mask is not None or self.synchronized:
            return super()._moments(inputs, mask)
        axes = self._reduction_axes
        mean = ops.mean(inputs, axis=axes, keepdims=True)
        variance = ops.mean(ops.square(inputs - mean), axis=axes)
        return ops.squeeze(mean, axis=axes), variance

    def call(self, inputs, training=None, mask=None):
        if not (training and self.trainable) or mask is not None or self.synchronized:
            return super().call(inputs, training=training, mask=mask)
        if self.renorm:
            return super().call(inputs, training=training, mask=mask)
        # Training mode on one device: the same statistics and outputs as Keras's
        # path, with a hand-written backward pass (see `normalize`).
        x = tf.cast(inputs, keras.backend.result_type(inputs.dtype, "float32"))
        y, mean, variance = normalize(x, self._reduction_axes, self.epsilon)
        self.moving_mean.assign(
            ops.cast(self.moving_mean, x.dtype) * self.momentum + mean * (1.0 - self.momentum)
        )
        self.moving_variance.assign(
            ops.cast(self.moving_variance, x.dtype) * self.momentum
            + variance * (1.0 - self.momentum)
        )
        if self.scale:
            y = y * ops.cast(self.gamma, y.dtype)
        if self.center:
            y = y + ops.cast(self.beta, y.dtype)
        return ops.cast(y, self.compute_dtype)


def normalize(x: tf.Tensor, axes, epsilon: float):
    """Training-mode batch normalization (no affine) with a lean, exact backward pass.

    y = (x - mean) * rsqrt(var + epsilon), the statistics over `axes` (biased
    variance). Autodiff of that composition builds a long backward graph (the
    gradients of two means, a square and a broadcast rsqrt), and HAR differentiates
    that graph once more. Here the first-order backward is the closed form

        dx = rstd * (dy - mean(dy) - y * mean(dy * y))

    written with ordinary ops on `y` and `rstd`, which are themselves computed from
    `x` by ordinary ops. A second differentiation (HAR's outer tape) goes through
    the closed form and then through `y(x)` and `rstd(x)`, so both orders are exact
    (tests/har_tf/test_layers.py checks them against the plain composition).

    Returns:
      (y, mean [C], variance [C]): `mean` and `variance` are for the moving
      statistics (Keras's biased variance) and carry no gradient.
    """
    mean = tf.reduce_mean(x, axis=axes, keepdims=True)
    centered = x - mean
    variance = tf.reduce_mean(tf.square(centered), axis=axes, keepdims=True)
    rstd = tf.math.rsqrt(variance + epsilon)
    y = _normalized(x, centered * rstd, rstd, tuple(axes))
    mean, variance = (tf.stop_gradient(tf.squeeze(t, axis=axes)) for t in (mean, variance))
    return y, mean, variance


def _normalized(x, y, rstd, axes):
    """`y` in value; its gradient w.r.t. `x` is the closed-form BN backward."""

    @tf.custom_gradient
    def forward(x, y, rstd):
        def backward(dy):
            m1 = tf.reduce_mean(dy, axis=axes, keepdims=True)
            m2 = tf.reduce_mean(dy * y, axis=axes, keepdims=True)
            # y and rstd get no first-order gradient here: dx already is the total
            # derivative through them.
            return rstd * (dy - m1 - y * m2), None, None

        return tf.identity(y), backward

    return forward(x, y, rstd)


def convert_batch_norms(model: keras.Model) -> keras.Model:
    """A copy of a functional/sequential model whose Keras BNs are `BatchNormalization`.

    Use it on models not built with har_tf (e.g. `keras.applications`) before
    wrapping them in `HARModel` with lam > 0. Weights are copied.
    """

    def clone(layer):
        if type(layer) is keras.layers.BatchNormalization:
            return BatchNormalization.from_config(layer.get_config())
        return layer.__class__.from_config(layer.get_config())

    converted = keras.models.clone_model(model, clone_function=clone)
    converted.set_weights(model.get_weights())
    return converted
