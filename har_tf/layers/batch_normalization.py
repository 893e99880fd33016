"""BatchNormalization whose training-mode statistics are differentiable twice."""

import keras
import tensorflow as tf
from keras import ops

from har_tf.layers import fused


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

    This subclass computes the mean and the (biased) variance without that
    stop_gradient, with hand-written derivatives of both orders (`normalize`);
    saving, moving statistics and `synchronized=True` (whose cross-replica path has
    no stop_gradient) are Keras's. On CPU in float32 the training-mode pass and the
    inference-mode arithmetic (Keras's, from the moving statistics) run on fused
    kernels (`har_tf.layers.fused`). Inputs with a mask fall back to Keras's
    computation.

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
        if not (training and self.trainable):
            if mask is None and not self.renorm and _fusable(inputs, self._reduction_axes):
                return self._fused_inference(inputs)
            return super().call(inputs, training=training, mask=mask)
        if mask is not None or self.synchronized or self.renorm:
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
        return ops.cast(self._affine(y), self.compute_dtype)

    def _affine(self, y):
        """y * gamma + beta along the layer's channel axis (each where present)."""
        gamma = ops.cast(self.gamma, y.dtype) if self.scale else None
        beta = ops.cast(self.beta, y.dtype) if self.center else None
        channels_last = self.axis % y.shape.rank == y.shape.rank - 1
        if channels_last and self.scale and self.center:
            return fused.affine(y, gamma, beta)
        # Per-channel factors broadcast along `axis` (for axis=1: [1, C, 1, ...]).
        shape = [1] * y.shape.rank
        shape[self.axis] = -1
        if self.scale:
            y = y * ops.reshape(gamma, shape)
        if self.center:
            y = y + ops.reshape(beta, shape)
        return y

    def _fused_inference(self, inputs):
        """Keras's inference-mode arithmetic, x * scale + (beta - mean * scale) with
        scale = gamma * rsqrt(moving_variance + epsilon), as one fused kernel."""
        scale = tf.math.rsqrt(self.moving_variance + self.epsilon)
        if self.scale:
            scale = scale * self.gamma
        offset = -self.moving_mean * scale
        if self.center:
            offset = offset + self.beta
        return fused.affine(inputs, scale, offset)


def normalize(x: tf.Tensor, axes, epsilon: float):
    """Training-mode batch normalization (no affine) with hand-written derivatives.

    y = (x - mean) * rstd with rstd = rsqrt(var + epsilon), the statistics over
    `axes` (biased variance). Autodiff of that composition builds a long backward
    graph, and HAR's outer tape differentiates that graph once more. Here both
    orders are closed forms. Per channel, over its N elements, with M() the mean
    and J = dy/dx (a symmetric N x N matrix):

    - first order (every backward pass): dx = J dy = rstd * (dy - M(dy) - y M(dy y));
    - second order (the outer tape of double backprop differentiating that dx, with
      cotangent c): dy gets J c, and x gets
      -rstd * (q / N * y + M(dy y) * J c + M(c y) * dx), where q = c^T J dy.

    The rule is attached to the backward op's inputs (dy, y, rstd), which any
    backward pass keeps anyway, so an ERM step keeps no extra tensor. It is exact
    for second derivatives, all that HAR needs; third and higher derivatives are
    not supported. tests/har_tf/test_layers.py checks both orders against autodiff of
    the plain composition in float64.

    On CPU, float32 statistics over all axes but the last (any channels-last BN)
    run on TensorFlow's fused kernels (oneDNN): the forward is one
    FusedBatchNormV3, and each J product (the backward, and J c in the second
    order) one FusedBatchNormGradV3, in place of about seven elementwise ops and
    reductions each. The formulas are the same; test_layers checks the fused path
    against the float64 composition.

    Returns:
      (y, mean [C], variance [C]): `mean` and `variance` are for the moving
      statistics (Keras's biased variance) and carry no gradient.
    """
    axes = tuple(axes)
    # The tape-visible outputs, for the second-order op to hang on (filled below,
    # read when the backward pass runs).
    visible = {}

    @tf.custom_gradient
    def forward(x):
        if _fusable(x, axes):
            y, mean, variance = fused.normalize(x, epsilon)
            rstd = tf.math.rsqrt(variance + epsilon)
        else:
            mean = tf.reduce_mean(x, axis=axes, keepdims=True)
            centered = x - mean
            variance = tf.reduce_mean(tf.square(centered), axis=axes, keepdims=True)
            rstd = tf.math.rsqrt(variance + epsilon)
            y = centered * rstd

        def backward(dy, d_rstd, d_mean, d_variance):
            del d_mean, d_variance  # for the moving statistics only
            if fused.statically_zero(d_rstd):
                # The first-order backward (ERM, or HAR's inner pass): one op whose
                # own gradient, should a tape record it, is the second-order rule.
                return _differentiable_backward(dy, visible["y"], visible["rstd"], axes, epsilon)
            # Only the second-order rule sends a cotangent to rstd. Its share,
            # d_rstd * d rstd / dx = -d_rstd * rstd^2 * y / N, joins J dy's y term.
            dx, _, _ = _jacobian_product(dy, y, rstd, axes, y_term=d_rstd * rstd / _count(y, rstd))
            return dx

        return (y, rstd, mean, variance), backward

    y, rstd, mean, variance = forward(x)
    visible.update(y=y, rstd=rstd)
    mean, variance = (tf.stop_gradient(tf.squeeze(t, axis=axes)) for t in (mean, variance))
    return y, mean, variance


def _fusable(t, axes) -> bool:
    """Whether the fused kernels compute this BN: statistics over all axes but the last."""
    rank = t.shape.rank
    return fused.fusable(t) and tuple(sorted(a % rank for a in axes)) == tuple(range(rank - 1))


def _count(t, rstd):
    """N, the number of elements of `t` per channel."""
    return tf.cast(tf.size(t) // tf.size(rstd), t.dtype)


def _jacobian_product(dy, y, rstd, axes, y_term=None):
    """(J dy, M(dy), M(dy y)): the BN backward rstd * (dy - M(dy) - y * M(dy y)).

    `y_term` (per channel) is added to M(dy y) in the result: the share of a
    cotangent of rstd, which moves x along y.
    """
    if _fusable(dy, axes):
        dx, sum_dy, sum_dy_y = fused.jacobian_product(dy, y, rstd)
        n = _count(dy, rstd)
        dx = dx if y_term is None else dx - (rstd * y_term) * y
        return dx, sum_dy / n, sum_dy_y / n
    m1 = tf.reduce_mean(dy, axis=axes, keepdims=True)
    m2 = tf.reduce_mean(dy * y, axis=axes, keepdims=True)
    coefficient = m2 if y_term is None else m2 + y_term
    return rstd * (dy - m1 - y * coefficient), m1, m2


def _differentiable_backward(dy, y, rstd, axes, epsilon):
    """J dy as one op of (dy, y, rstd) whose gradient is the closed-form second order.

    With c the cotangent of dx = J dy, and m1 = M(dy), m2 = M(dy y):
    - dy gets J c;
    - y gets -(m2 * J c + M(c y) * dx), and rstd gets
      N * (M(c dy) - M(c) m1 - M(c y) m2 + 2 epsilon rstd^2 m2 M(c y)).
    The forward op's backward turns those two into x's cotangent,
    J y_bar - rstd_bar * rstd^2 * y / N, which equals the formula in `normalize`:
    J (J c) = rstd * J c - epsilon rstd^4 M(c y) y, because y^T y = N (1 - epsilon
    rstd^2), and likewise for J dx; the epsilon term of rstd_bar cancels those.
    """

    @tf.custom_gradient
    def backward(dy, y, rstd):
        dx, m1, m2 = _jacobian_product(dy, y, rstd, axes)
        n = _count(dy, rstd)

        def second_order(c):
            d_dy, m_c, m_cy = _jacobian_product(c, y, rstd, axes)
            m_cdy = tf.reduce_mean(c * dy, axis=axes, keepdims=True)
            d_y = (-m2) * d_dy - m_cy * dx  # the signs on the per-channel factors
            d_rstd = n * (
                m_cdy - m_c * m1 - m_cy * m2 + 2.0 * epsilon * tf.square(rstd) * m2 * m_cy
            )
            return d_dy, d_y, d_rstd

        return dx, second_order

    return backward(dy, y, rstd)
