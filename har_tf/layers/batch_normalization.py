"""BatchNormalization whose training-mode statistics are differentiable twice."""

import keras
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
