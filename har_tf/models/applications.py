"""The paper's WebVision networks from `keras.applications`, ready for HAR.

The paper (Sec. 3.3) trains ResNet-50 (ablations on mini WebVision) and
InceptionResNet-v2 (the comparison with other methods) on WebVision. Both builders
return randomly initialized models (`weights=None`: nothing is downloaded) whose
BatchNormalization layers are `har_tf.layers.BatchNormalization`, so that HAR's
second derivatives are exact, whose ReLUs are `har_tf.layers.ReLU` (less memory
under HAR), and whose BN outputs are HAR's tapped tensors (`bn_tap_layers`).

What is tapped differs from the authors' CIFAR code, which regularizes the
normalized, pre-affine x_hat of each BN. A keras.applications BN applies its affine
inside the layer, so its output is y = gamma * x_hat + beta and dL/dx_hat =
gamma * dL/dy:
- ResNet-50 (BN with scale and center): R uses dL/dy, i.e. the authors' per-channel
  gradients divided by gamma. Their R can also shrink by shrinking gamma; this one
  does not depend on a BN's own gamma, only on the layers after it.
- InceptionResNet-v2 (BN with scale=False): y = x_hat + beta, so dL/dy = dL/dx_hat
  and R is exactly the pre-affine R.
For ResNet-50 with the authors' exact taps, rebuild it with
`har_tf.layers.pre_affine_batch_norm` (as `har_tf.models.cifar_resnet` does).
"""

from __future__ import annotations

from collections.abc import Sequence

import keras

from har_tf.layers.conversion import batch_norm_converter, convert, relu_converter


def resnet50(
    *,
    num_classes: int,
    input_shape: Sequence[int] = (224, 224, 3),
    pooling: str = "avg",
    name: str = "resnet50",
) -> keras.Model:
    """ResNet-50 (He et al., 2016) from `keras.applications`, with logits for HAR.

    `keras.applications.ResNet50(weights=None, include_top=False, pooling=pooling)`
    followed by a Dense `logits` layer (no softmax), with every BN converted to
    `har_tf.layers.BatchNormalization` and every ReLU to `har_tf.layers.ReLU`
    (weights and layer names kept). Inputs are
    images preprocessed by the caller (`keras.applications.resnet50.preprocess_input`:
    BGR, ImageNet mean subtracted); at least 32x32.

    Taps (`bn_tap_layers`): the 53 BN outputs (stem, 3 per bottleneck block, 4
    projection shortcuts). They are post-affine (gamma * x_hat + beta), not the
    authors' pre-affine x_hat: see the module docstring. Note that the last stage
    works at 1/32 of the input size, so with tiny inputs and per-replica batches its
    training-mode BN statistics come from a handful of values and R becomes huge.

    Args:
      num_classes: width of the logits (50 for mini WebVision, 1000 for WebVision).
      input_shape: (H, W, 3) of one input.
      pooling: "avg" or "max" global pooling before the logits.
      name: model name.

    Returns:
      A functional `keras.Model` mapping images to logits.
    """
    _check(num_classes, pooling)
    base = keras.applications.ResNet50(
        include_top=False, weights=None, input_shape=tuple(input_shape), pooling=pooling
    )
    return _with_logits(base, num_classes, name)


def inception_resnet_v2(
    *,
    num_classes: int,
    input_shape: Sequence[int] = (299, 299, 3),
    pooling: str = "avg",
    name: str = "inception_resnet_v2",
) -> keras.Model:
    """Inception-ResNet-v2 (Szegedy et al., 2017) from `keras.applications`, for HAR.

    `keras.applications.InceptionResNetV2(weights=None, include_top=False,
    pooling=pooling)` followed by a Dense `logits` layer, with every BN converted to
    `har_tf.layers.BatchNormalization` and every ReLU to `har_tf.layers.ReLU`.
    Inputs are images preprocessed by the caller
    (`keras.applications.inception_resnet_v2.preprocess_input`: scaled to [-1, 1]);
    at least 75x75.

    Taps (`bn_tap_layers`): the BN of every conv-BN unit, 204 of them; the 40 1x1
    up-projections of the residual blocks have no BN and are not tapped. These BNs
    have scale=False, so the tapped y = x_hat + beta has the same gradient as the
    authors' pre-affine x_hat (module docstring).

    Args:
      num_classes: width of the logits (50 for mini WebVision, 1000 for WebVision).
      input_shape: (H, W, 3) of one input, H and W >= 75.
      pooling: "avg" or "max" global pooling before the logits.
      name: model name.

    Returns:
      A functional `keras.Model` mapping images to logits.
    """
    _check(num_classes, pooling)
    base = keras.applications.InceptionResNetV2(
        include_top=False, weights=None, input_shape=tuple(input_shape), pooling=pooling
    )
    return _with_logits(base, num_classes, name)


def bn_tap_layers(model: keras.Model) -> list[str]:
    """Names of all BatchNormalization layers of a model, in layer order.

    HAR's tapped layers for `resnet50` and `inception_resnet_v2`: pass
    `tap_layers=bn_tap_layers(backbone)` to `HARModel` (whose default taps only
    pre-affine BNs, i.e. none of these).
    """
    return [
        layer.name for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)
    ]


def _check(num_classes: int, pooling: str) -> None:
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if pooling not in ("avg", "max"):
        raise ValueError(f"pooling must be 'avg' or 'max', got {pooling!r}")


def _with_logits(base: keras.Model, num_classes: int, name: str) -> keras.Model:
    logits = keras.layers.Dense(num_classes, name="logits")(base.output)
    return convert(keras.Model(base.input, logits, name=name), batch_norm_converter, relu_converter)
