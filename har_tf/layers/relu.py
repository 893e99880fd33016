"""ReLU whose second derivative keeps no tensor of zeros."""

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="har_tf")
class ReLU(keras.layers.ReLU):
    """`keras.layers.ReLU` with a leaner second derivative, for double backprop.

    The backward pass of max(x, 0) is `ReluGrad(dy, y)`, which is linear in dy and
    piecewise constant in y. TensorFlow's gradient of `ReluGrad` nevertheless
    returns an explicit tensor of zeros for y; in HAR's outer pass that tensor is
    allocated for every ReLU, kept until the backward sweep through the forward
    pass reaches it, and added to the real gradient. This layer's backward is one
    op of dy whose gradient is `ReluGrad(c, y)` and nothing for y. The values of all
    derivatives are unchanged (tested); what it saves: docs/PERFORMANCE.md. The
    forward and first-order backward run TensorFlow's own Relu and ReluGrad.

    Only the plain ReLU (no `max_value`, `negative_slope` or `threshold`) takes
    that path; the others are Keras's.

    Args: those of `keras.layers.ReLU`.
    """

    def call(self, inputs):
        if self.max_value is None and not self.negative_slope and not self.threshold:
            return relu(inputs)
        return super().call(inputs)


def relu(x: tf.Tensor) -> tf.Tensor:
    """max(x, 0); see `ReLU` for its derivatives."""

    @tf.custom_gradient
    def forward(x):
        y = tf.nn.relu(x)

        def backward(dy):
            return _backward(dy, y)

        return y, backward

    return forward(x)


def _backward(dy, y):
    """ReluGrad(dy, y) as an op of dy alone: its gradient ignores y's (zero) share."""

    @tf.custom_gradient
    def backward(dy):
        def second_order(c):
            return tf.raw_ops.ReluGrad(gradients=c, features=y)

        return tf.raw_ops.ReluGrad(gradients=dy, features=y), second_order

    return backward(dy)
