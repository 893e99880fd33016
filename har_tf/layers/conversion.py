"""Copies of Keras models with layers swapped for their double-backprop versions."""

from __future__ import annotations

from collections.abc import Callable

import keras

from har_tf.layers.batch_normalization import BatchNormalization
from har_tf.layers.relu import ReLU

Converter = Callable[[keras.layers.Layer], "keras.layers.Layer | None"]


def batch_norm_converter(layer):
    """`har_tf.layers.BatchNormalization` for a stock Keras BN, else None."""
    if type(layer) is keras.layers.BatchNormalization:
        return BatchNormalization.from_config(layer.get_config())
    return None


def relu_converter(layer):
    """`har_tf.layers.ReLU` for a plain Keras ReLU or Activation("relu"), else None."""
    config = layer.get_config()
    if type(layer) is keras.layers.Activation and config.get("activation") == "relu":
        return ReLU(name=config["name"], dtype=config.get("dtype"))
    if (
        type(layer) is keras.layers.ReLU
        and config.get("max_value") is None
        and not config.get("negative_slope")
        and not config.get("threshold")
    ):
        return ReLU.from_config(config)
    return None


def convert(model: keras.Model, *converters: Converter) -> keras.Model:
    """A copy of a functional/sequential model, each layer replaced by the first
    converter that returns one (else copied as it is); weights are copied."""

    def clone(layer):
        for converter in converters:
            new = converter(layer)
            if new is not None:
                return new
        return layer.__class__.from_config(layer.get_config())

    converted = keras.models.clone_model(model, clone_function=clone)
    converted.set_weights(model.get_weights())
    return converted


def convert_batch_norms(model: keras.Model) -> keras.Model:
    """A copy of a functional/sequential model whose Keras BNs are
    `har_tf.layers.BatchNormalization` (names and weights kept).

    Use it on models not built with har_tf (e.g. `keras.applications`) before
    wrapping them in `HARModel` with lam > 0.
    """
    return convert(model, batch_norm_converter)


def convert_relus(model: keras.Model) -> keras.Model:
    """A copy of a model whose plain ReLUs are `har_tf.layers.ReLU` (names and weights kept).

    `keras.layers.ReLU()` and `keras.layers.Activation("relu")` (as in
    keras.applications) are replaced; ReLUs with max_value, negative_slope or
    threshold, and activations fused into other layers (`Conv2D(activation="relu")`)
    are left as they are. Values and derivatives are unchanged; under HAR the outer
    pass keeps no tensor of zeros per ReLU (see `har_tf.layers.ReLU`).
    """
    return convert(model, relu_converter)
