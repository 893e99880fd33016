"""Per-channel affine transform, and BatchNorm split into normalization + affine."""

import keras

from har_tf.layers import fused
from har_tf.layers.batch_normalization import BatchNormalization


@keras.saving.register_keras_serializable(package="har_tf")
class ChannelAffine(keras.layers.Layer):
    """`y = gamma * x + beta` with one gamma and beta per channel (last axis).

    Placed after a `keras.layers.BatchNormalization(center=False, scale=False)`, the
    pair computes exactly what one BatchNormalization layer computes, but the
    normalized, pre-affine tensor `x_hat` is a layer output of its own. That is the
    tensor the authors' HAR code regularizes (their BN is split the same way), and a
    layer output is something `HARModel` can tap by name. On CPU in float32 it runs
    as one fused kernel forward and one backward (`har_tf.layers.fused.affine`).

    Args:
      gamma_initializer: initializer of the scale (default ones).
      beta_initializer: initializer of the shift (default zeros).
      **kwargs: forwarded to `keras.layers.Layer`.

    Example:
    ```python
    x_hat = keras.layers.BatchNormalization(center=False, scale=False)(h)
    y = ChannelAffine()(x_hat)
    ```
    """

    def __init__(self, gamma_initializer="ones", beta_initializer="zeros", **kwargs):
        super().__init__(**kwargs)
        self.gamma_initializer = keras.initializers.get(gamma_initializer)
        self.beta_initializer = keras.initializers.get(beta_initializer)

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is None:
            raise ValueError(f"{self.name}: the channel axis (last) must be known")
        self.gamma = self.add_weight(
            name="gamma", shape=(channels,), initializer=self.gamma_initializer
        )
        self.beta = self.add_weight(
            name="beta", shape=(channels,), initializer=self.beta_initializer
        )

    def call(self, inputs):
        gamma = keras.ops.cast(self.gamma, inputs.dtype)
        beta = keras.ops.cast(self.beta, inputs.dtype)
        return fused.affine(inputs, gamma, beta)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            gamma_initializer=keras.initializers.serialize(self.gamma_initializer),
            beta_initializer=keras.initializers.serialize(self.beta_initializer),
        )
        return config


def pre_affine_batch_norm(x, *, name, momentum=0.9, epsilon=1e-5, synchronized=False):
    """BatchNorm as normalization (`<name>`, tappable) followed by `<name>_affine`.

    The normalization is `har_tf.layers.BatchNormalization` (exact second
    derivatives). Defaults are PyTorch's BatchNorm2d (momentum 0.1 in PyTorch's convention is 0.9
    in Keras's; epsilon 1e-5), as in the authors' code.

    Args:
      x: the input tensor (channels last).
      name: name of the normalization layer; the affine is `<name>_affine`.
      momentum, epsilon: of the normalization's moving statistics and variance.
      synchronized: compute training-mode batch statistics over the global batch
        of all replicas of a `tf.distribute` strategy (Keras's `synchronized=True`).
        Use it under a multi-replica strategy: without it each replica normalizes
        with its own slice's statistics, so the result depends on how the batch is
        split, and the replicas' moving statistics drift apart. A no-op on one
        device (the same statistics, computed as E[x^2] - E[x]^2).

    Returns:
      The affine output; the normalized tensor is `model.get_layer(name).output`.
    """
    x_hat = BatchNormalization(
        center=False,
        scale=False,
        momentum=momentum,
        epsilon=epsilon,
        synchronized=synchronized,
        name=name,
    )(x)
    return ChannelAffine(name=f"{name}_affine")(x_hat)
