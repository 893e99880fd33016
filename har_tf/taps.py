"""Which activations HAR regularizes: the default taps, the view of a backbone that
returns them, and what a backbone must support for HAR's second derivatives (the
checks `HARModel` runs when lam > 0)."""

from __future__ import annotations

import keras
import tensorflow as tf


def default_tap_layers(backbone: keras.Model) -> list[str]:
    """Names of the pre-affine BatchNorm layers (no center, no scale) of a backbone.

    That is HAR's default tap set: the normalized x_hat of every BN that
    `har_tf.layers.pre_affine_batch_norm` created, and nothing else (an ordinary BN,
    such as the stem's, is not tapped).
    """
    return [
        layer.name
        for layer in backbone.layers
        if isinstance(layer, keras.layers.BatchNormalization)
        and not layer.center
        and not layer.scale
    ]


def _nested_layers(backbone: keras.Model):
    # Keras has no public recursive layer walk; `_flatten_layers` is what
    # `Model.summary` and saving use to reach layers of nested models.
    return backbone._flatten_layers(include_self=False)


def check_twice_differentiable(backbone: keras.Model) -> None:
    """Refuses layers whose second derivatives are wrong or missing (lam > 0)."""
    stock = [
        layer.name
        for layer in _nested_layers(backbone)
        if type(layer) is keras.layers.BatchNormalization
    ]
    if stock:
        raise ValueError(
            f"lam > 0 needs second derivatives through every BatchNormalization, "
            f"and keras.layers.BatchNormalization gets them wrong in training mode "
            f"(tf.nn.moments stops the gradient of the mean). Layers {stock[:3]}"
            f"{' ...' if len(stock) > 3 else ''} are stock Keras BNs: convert the "
            "backbone with har_tf.layers.convert_batch_norms(backbone) or build it "
            "with har_tf.layers.BatchNormalization."
        )
    # TensorFlow's cuDNN RNN kernel has no second-order gradient (nothing is
    # registered for CudnnRNNBackpropV3), and Keras picks it on a GPU.
    cudnn = [
        layer.name
        for layer in _nested_layers(backbone)
        if getattr(layer, "use_cudnn", False) is not False
    ]
    if cudnn and tf.config.list_logical_devices("GPU"):
        raise ValueError(
            f"lam > 0 needs second derivatives through every RNN, and the cuDNN "
            f"kernel that Keras uses on a GPU has none. Build recurrent layers "
            f"{cudnn[:3]}{' ...' if len(cudnn) > 3 else ''} with use_cudnn=False."
        )


def tap_model(backbone: keras.Model, tap_layers) -> keras.Model:
    """A view of `backbone` (same layers and variables) returning [*outputs, *taps]."""
    taps = []
    for name in tap_layers:
        try:
            taps.append(backbone.get_layer(name).output)
        except ValueError as e:
            raise ValueError(f"tap layer {name!r} is not a layer of {backbone.name}") from e
    return keras.Model(backbone.input, [*backbone.outputs, *taps])
