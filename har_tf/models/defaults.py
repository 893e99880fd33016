"""The backbone `har_tf.HARClassifier` builds when it is given none."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import keras

from har_tf.models.mlp import mlp, mlp_tap_layers
from har_tf.models.resnet import cifar_resnet


def default_backbone(
    example_shape: Sequence[int], num_classes: int, *, hidden_layer_sizes: Sequence[int]
) -> tuple[Callable[[], keras.Model], Callable | None]:
    """(build, tap_layers) for examples of `example_shape`, as a table or images.

    Rows [F]: `mlp` with `hidden_layer_sizes`, its hidden ReLUs tapped (what
    scikit-learn's `MLPClassifier` would fit). Images [H, W, C]: a ResNet-8
    (`cifar_resnet(depth=8)`, 16/32/64 channels), its pre-affine BNs tapped
    (`tap_layers` None: `HARModel`'s default). Anything else: a ValueError asking for
    a `build_backbone`.
    """
    shape = tuple(example_shape)
    if len(shape) == 1:
        sizes = tuple(hidden_layer_sizes)
        return (
            lambda: mlp(num_features=shape[0], num_classes=num_classes, hidden_layer_sizes=sizes),
            mlp_tap_layers,
        )
    if len(shape) == 3:
        return lambda: cifar_resnet(depth=8, input_shape=shape, num_classes=num_classes), None
    raise ValueError(
        f"no default backbone for examples of shape {shape}: the defaults take rows "
        "[N, F] (an MLP) or images [N, H, W, C] (a ResNet); pass build_backbone"
    )
