"""CIFAR-style ResNets (He et al., 2016) as in the authors' code, with tappable BNs."""

from __future__ import annotations

import re
from collections.abc import Sequence

import keras

from har_tf.layers import BatchNormalization, ReLU, ShortcutA, pre_affine_batch_norm

# kaiming_normal_ as the authors call it: fan_in, gain sqrt(2), not truncated.
_HE_NORMAL = {
    "class_name": "VarianceScaling",
    "config": {"scale": 2.0, "mode": "fan_in", "distribution": "untruncated_normal"},
}


def _conv(x, filters, strides, name):
    if strides > 1:
        # PyTorch's padding=1 pads both sides; Keras "same" with stride 2 pads only
        # bottom/right, which shifts the sampling grid. Pad explicitly to match.
        x = keras.layers.ZeroPadding2D(1, name=f"{name}_pad")(x)
        padding = "valid"
    else:
        padding = "same"
    return keras.layers.Conv2D(
        filters,
        3,
        strides=strides,
        padding=padding,
        use_bias=False,
        kernel_initializer=_HE_NORMAL,
        name=name,
    )(x)


def _activation(x, activation, name):
    """har_tf.layers.ReLU for "relu" (lean second order), else keras's Activation."""
    if activation == "relu":
        return ReLU(name=name)(x)
    return keras.layers.Activation(activation, name=name)(x)


def _basic_block(x, filters, strides, name, synchronized=False, activation="relu"):
    shortcut = x
    y = _conv(x, filters, strides, f"{name}_conv1")
    y = pre_affine_batch_norm(y, name=f"{name}_bn1", synchronized=synchronized)
    y = _activation(y, activation, f"{name}_relu1")
    y = _conv(y, filters, 1, f"{name}_conv2")
    y = pre_affine_batch_norm(y, name=f"{name}_bn2", synchronized=synchronized)
    if strides != 1 or x.shape[-1] != filters:
        shortcut = ShortcutA(filters, strides, name=f"{name}_shortcut")(x)
    y = keras.layers.Add(name=f"{name}_add")([y, shortcut])
    return _activation(y, activation, f"{name}_out")


def cifar_resnet(
    *,
    num_classes: int = 10,
    input_shape: Sequence[int] = (32, 32, 3),
    depth: int | None = None,
    blocks_per_stage: int = 5,
    widths: Sequence[int] = (16, 32, 64),
    stem_strides: int = 1,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    synchronized_bn: bool = False,
    activation: str = "relu",
    name: str = "cifar_resnet",
) -> keras.Model:
    """Builds a CIFAR ResNet whose block BNs are split into tappable normalization + affine.

    With the defaults (`depth=32` or `blocks_per_stage=5`) this is the authors'
    ResNet-32: 3 stages of 5 basic blocks, 16/32/64 channels, option-A shortcuts,
    He-normal (fan-in) init, BN eps 1e-5 / momentum 0.9 (PyTorch 0.1). Each block's
    two BNs are `BatchNormalization(center=False, scale=False)` layers named
    `stage{s}_block{b}_bn{1,2}` followed by a `ChannelAffine`; those are HAR's tapped
    tensors (30 for ResNet-32). The stem BN is an ordinary BatchNormalization, so it
    is not tapped, as in the authors' code.

    Args:
      num_classes: width of the logits layer.
      input_shape: (H, W, C) of one raw input (pixel values on the 0..255 scale
        when `mean`/`std` are given).
      depth: 6n+2 total depth; overrides `blocks_per_stage` with n.
      blocks_per_stage: basic blocks per stage.
      widths: channels of each stage; stages after the first downsample by 2.
      stem_strides: stride of the stem convolution (2 for small inputs on a CPU).
      mean, std: per-channel normalization applied inside the model, so that the
        exported model takes raw pixels.
      synchronized_bn: every BatchNormalization (stem included) computes its
        training-mode statistics over the global batch of all replicas
        (`synchronized=True`). Set it under a multi-replica `tf.distribute`
        strategy, so that training does not depend on how a batch is split across
        replicas; it is saved in each layer's config.
      activation: the nonlinearity after each BN, a name that
        `keras.activations.get` knows. "relu" (the authors' network) uses
        `har_tf.layers.ReLU`; any other, e.g. "softplus", a `keras.layers.Activation`
        under the same layer names. HAR needs it twice differentiable. HAR's weight
        gradient of a ReLU network jumps where a unit switches, so the exactness
        tests use a smooth one (docs/EXACTNESS.md).
      name: model name.

    Returns:
      A functional `keras.Model` mapping images to logits.
    """
    if depth is not None:
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"depth must be 6n+2 with n >= 1, got {depth}")
        blocks_per_stage = (depth - 2) // 6
    if blocks_per_stage < 1 or not widths:
        raise ValueError("need at least one stage with one block")
    try:
        keras.activations.get(activation)
    except ValueError as e:
        raise ValueError(f"activation must name a Keras activation, got {activation!r}") from e
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = inputs
    if mean is not None or std is not None:
        if mean is None or std is None or len(mean) != len(std):
            raise ValueError("mean and std must be given together, one value per channel")
        x = keras.layers.Normalization(
            mean=list(mean), variance=[s * s for s in std], name="normalize"
        )(x)
    x = _conv(x, widths[0], stem_strides, "stem_conv")
    x = BatchNormalization(
        momentum=0.9, epsilon=1e-5, synchronized=synchronized_bn, name="stem_bn"
    )(x)
    x = _activation(x, activation, "stem_relu")
    for s, filters in enumerate(widths):
        for b in range(blocks_per_stage):
            strides = 2 if (s > 0 and b == 0) else 1
            x = _basic_block(
                x, filters, strides, f"stage{s + 1}_block{b + 1}", synchronized_bn, activation
            )
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = keras.layers.Dense(num_classes, kernel_initializer=_HE_NORMAL, name="logits")(x)
    return keras.Model(inputs, outputs, name=name)


_BLOCK_OUTPUT = re.compile(r"block\d+_out$")


def block_output_layers(backbone: keras.Model) -> list[str]:
    """Names of the residual blocks' output layers of a ResNet, in order.

    These cut a ResNet into one segment per block (the stem and the head are joined
    to the first and last block's segments): `har_tf.models.cifar_resnet`'s
    `stage{s}_block{b}_out` and keras.applications ResNet50's `conv{s}_block{b}_out`.
    The last block's output is left out (its segment would hold only the head).
    """
    names = [layer.name for layer in backbone.layers if _BLOCK_OUTPUT.search(layer.name)]
    return names[:-1]
