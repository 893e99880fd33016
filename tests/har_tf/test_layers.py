import keras
import numpy as np
import pytest

from har_tf import HARModel, default_tap_layers
from har_tf.layers import ChannelAffine, ShortcutA, pre_affine_batch_norm
from har_tf.models import cifar_resnet


def _pair(channels):
    inp = keras.Input((5, 5, channels))
    split = keras.Model(inp, pre_affine_batch_norm(inp, name="bn"))
    fused = keras.Sequential(
        [keras.Input((5, 5, channels)), keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5)]
    )
    return split, fused


@pytest.mark.parametrize("training", [True, False])
def test_pre_affine_batch_norm_equals_keras_batch_norm(training):
    rng = np.random.default_rng(0)
    split, fused = _pair(3)
    gamma, beta = rng.normal(size=3), rng.normal(size=3)
    mean, var = rng.normal(size=3), rng.uniform(0.5, 2, size=3)
    split.get_layer("bn").set_weights([mean, var])
    split.get_layer("bn_affine").set_weights([gamma, beta])
    fused.layers[0].set_weights([gamma, beta, mean, var])
    x = rng.normal(2.0, 3.0, size=(8, 5, 5, 3)).astype("float32")
    np.testing.assert_allclose(
        split(x, training=training), fused(x, training=training), rtol=1e-5, atol=1e-5
    )
    # Both update their moving statistics identically.
    np.testing.assert_allclose(
        split.get_layer("bn").get_weights()[0], fused.layers[0].get_weights()[2], rtol=1e-5
    )
    np.testing.assert_allclose(
        split.get_layer("bn").get_weights()[1], fused.layers[0].get_weights()[3], rtol=1e-5
    )


def test_channel_affine_requires_known_channels():
    with pytest.raises(ValueError, match="channel axis"):
        ChannelAffine().build((None, None))


def test_shortcut_a_subsamples_and_zero_pads_channels():
    x = np.arange(2 * 4 * 4 * 2, dtype="float32").reshape(2, 4, 4, 2)
    y = np.asarray(ShortcutA(6, 2)(x))
    assert y.shape == (2, 2, 2, 6)
    np.testing.assert_array_equal(y[..., 2:4], x[:, ::2, ::2, :])
    assert not y[..., :2].any() and not y[..., 4:].any()


def test_resnet32_matches_the_authors_network():
    model = cifar_resnet(depth=32)
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert trainable == 464_154  # torch resnet32() of the authors' code: 0.46M
    taps = default_tap_layers(model)
    assert len(taps) == 30
    assert "stem_bn" not in taps
    assert model.output.shape == (None, 10)


def test_resnet_depth_must_be_6n_plus_2():
    with pytest.raises(ValueError, match="6n\\+2"):
        cifar_resnet(depth=30)


def test_har_model_rejects_unknown_tap_layer_and_missing_taps():
    backbone = cifar_resnet(input_shape=(8, 8, 1), blocks_per_stage=1, widths=(4,))
    with pytest.raises(ValueError, match="tap layer 'nope'"):
        HARModel(backbone, lam=1.0, tap_layers=["nope"])
    plain = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="no tapped activations"):
        HARModel(plain, lam=1.0)
    with pytest.raises(ValueError, match="tau must have 10 entries"):
        HARModel(backbone, lam=1.0, tau=[1.0, 2.0])
