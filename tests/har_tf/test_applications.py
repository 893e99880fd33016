"""resnet50 / inception_resnet_v2: converted BNs, tap counts, one HAR train step."""

import keras
import numpy as np
import pytest

from har_tf import layers
from har_tf.models import bn_tap_layers, inception_resnet_v2, resnet50
from tests import harness


def _one_har_step(backbone, input_shape, *, run_eagerly):
    model = harness.har_model(
        backbone,
        lam=1.0,
        tap_layers=bn_tap_layers(backbone),
        weight_decay=1e-4,
        optimizer=keras.optimizers.SGD(1e-3),
        compile_kwargs={"run_eagerly": run_eagerly},
    )
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, size=(2, *input_shape)).astype("float32")
    y = np.array([0, 3], "int32")
    before = backbone.get_layer("logits").get_weights()[0].copy()
    logs = model.train_on_batch(x, y, return_dict=True)
    assert set(logs) == {"loss", "ce", "reg"}
    assert all(np.isfinite(v) for v in logs.values()), logs
    assert logs["reg"] > 0 and logs["loss"] > logs["ce"]
    assert not np.allclose(backbone.get_layer("logits").get_weights()[0], before)


def _check_taps(model, expected):
    taps = bn_tap_layers(model)
    assert len(taps) == expected
    # Every BN is har_tf's (exact second derivatives); none is stock Keras.
    assert all(type(model.get_layer(name)) is layers.BatchNormalization for name in taps)
    assert not any(type(layer) is keras.layers.BatchNormalization for layer in model.layers)
    assert model.get_layer("logits").activation is keras.activations.linear
    # Every ReLU layer is har_tf's (no tensor of zeros in HAR's outer pass).
    relus = [layer for layer in model.layers if type(layer) is layers.ReLU]
    assert relus and not any(
        type(layer) is keras.layers.Activation and layer.get_config()["activation"] == "relu"
        for layer in model.layers
    )
    return taps


@pytest.mark.slow
def test_resnet50_taps_every_bn_and_trains_with_har():
    shape = (64, 64, 3)  # at 32x32 the last stage's BN sees 2 values per channel
    model = resnet50(num_classes=5, input_shape=shape)
    taps = _check_taps(model, 53)
    # One BN after each of the 53 convolutions, and the same layers, by name, as the
    # unconverted keras.applications model.
    assert len([layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]) == 53
    stock = keras.applications.ResNet50(include_top=False, weights=None, input_shape=shape)
    assert taps == [
        layer.name for layer in stock.layers if isinstance(layer, keras.layers.BatchNormalization)
    ]
    assert tuple(model.output.shape) == (None, 5)
    _one_har_step(model, shape, run_eagerly=False)


@pytest.mark.slow
def test_inception_resnet_v2_taps_every_conv_bn_and_trains_with_har():
    shape = (75, 75, 3)  # the smallest input keras.applications accepts
    model = inception_resnet_v2(num_classes=5, input_shape=shape)
    _check_taps(model, 204)
    # Each conv-BN unit has a bias-free conv; the 40 residual up-projections have a
    # bias and no BN.
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert sum(not c.use_bias for c in convs) == 204 and len(convs) == 244
    assert {(b.center, b.scale) for b in map(model.get_layer, bn_tap_layers(model))} == {
        (True, False)
    }
    # Eager: tracing the second-order graph of 204 BNs takes over a minute on 2 cores.
    _one_har_step(model, shape, run_eagerly=True)


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="num_classes"):
        resnet50(num_classes=1, input_shape=(32, 32, 3))
    with pytest.raises(ValueError, match="pooling"):
        inception_resnet_v2(num_classes=5, input_shape=(75, 75, 3), pooling=None)
