"""A multilayer perceptron for tabular data, its hidden activations tapped by HAR."""

from __future__ import annotations

from collections.abc import Sequence

import keras

from har_tf.layers import ReLU


def mlp(
    *,
    num_features: int,
    num_classes: int,
    hidden_layer_sizes: Sequence[int] = (100,),
    name: str = "mlp",
) -> keras.Model:
    """Dense -> ReLU blocks, then a dense layer of logits: [B, F] -> [B, C].

    The default backbone of `har_tf.HARClassifier` for 2-D inputs (a table), the
    network scikit-learn's `MLPClassifier` trains. Each hidden ReLU is named
    `hidden{i}` (from 1), and `mlp_tap_layers` returns those names: HAR regularizes
    the hidden activations, as it regularizes the block activations of a ResNet.

    Args:
      num_features: F, the width of one input row.
      num_classes: C, the width of the logits.
      hidden_layer_sizes: units of each hidden layer (at least one).
      name: model name.
    """
    sizes = tuple(hidden_layer_sizes)
    if not sizes or any(int(s) != s or s < 1 for s in sizes):
        raise ValueError(
            f"hidden_layer_sizes must be one or more positive integers, got {hidden_layer_sizes}"
        )
    inputs = keras.Input((int(num_features),), name="features")
    h = inputs
    for i, units in enumerate(sizes, start=1):
        h = keras.layers.Dense(int(units), name=f"dense{i}")(h)
        h = ReLU(name=f"hidden{i}")(h)
    outputs = keras.layers.Dense(int(num_classes), name="logits")(h)
    return keras.Model(inputs, outputs, name=name)


def mlp_tap_layers(model: keras.Model) -> list[str]:
    """Names of an `mlp`'s hidden activations (`hidden1`, `hidden2`, ...), in order."""
    return [layer.name for layer in model.layers if layer.name.startswith("hidden")]
