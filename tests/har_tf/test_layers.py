import keras
import numpy as np
import pytest
import tensorflow as tf

from har_tf import HARModel, default_tap_layers
from har_tf.layers import (
    BatchNormalization,
    ChannelAffine,
    ReLU,
    ShortcutA,
    convert_relus,
    pre_affine_batch_norm,
)
from har_tf.models import cifar_resnet
from tests import harness


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


def test_resnet_activation_replaces_every_relu_and_nothing_else(tmp_path):
    kwargs = dict(input_shape=(8, 8, 3), blocks_per_stage=1, widths=(4, 8), num_classes=3)
    relu = cifar_resnet(**kwargs)
    smooth = cifar_resnet(**kwargs, activation="softplus")
    relus = [layer.name for layer in relu.layers if isinstance(layer, ReLU)]
    assert len(relus) == 5  # the stem's and two per block
    for name in relus:
        layer = smooth.get_layer(name)
        assert type(layer) is keras.layers.Activation
        assert layer.get_config()["activation"] == "softplus"
    assert not any(isinstance(layer, ReLU) for layer in smooth.layers)
    assert [type(a) for a in relu.layers if a.name not in relus] == [
        type(b) for b in smooth.layers if b.name not in relus
    ]
    # The same weights give softplus where ReLU was: the stem's output is
    # softplus of the stem BN's.
    smooth.set_weights(relu.get_weights())
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype("float32")
    stem = keras.Model(
        smooth.input, [smooth.get_layer("stem_bn").output, smooth.get_layer("stem_relu").output]
    )
    bn, act = (t.numpy() for t in stem(x))
    np.testing.assert_allclose(act, np.log1p(np.exp(bn)), rtol=1e-5, atol=1e-6)
    loaded = harness.run_model_saving_test(smooth, tmp_path / "softplus.keras", x)
    assert loaded.get_layer(relus[-1]).get_config()["activation"] == "softplus"
    with pytest.raises(ValueError, match="activation must name a Keras activation, got 'nope'"):
        cifar_resnet(**kwargs, activation="nope")


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


def _moments(x):
    """Per-channel (last axis) mean and biased variance, keepdims."""
    axes = list(range(x.shape.rank - 1))
    mean = tf.reduce_mean(x, axis=axes, keepdims=True)
    return mean, tf.reduce_mean(tf.square(x - mean), axis=axes, keepdims=True)


def _plain_batch_norm(x, gamma, beta, eps=1e-5):
    """Training-mode BN as a plain composition of ops (autodiff gives both orders)."""
    mean, var = _moments(x)
    return (x - mean) * tf.math.rsqrt(var + eps) * gamma + beta


def _double_backprop(fn, x, weights, outer_weights, params=(), weight_term=None):
    """Both orders of derivatives of `fn`, as HAR's two tapes take them.

    Inner: loss = sum(sin(fn(x)) * weights), differentiated w.r.t. [x, *params].
    Outer: sum(sin(3 dloss/dx) * outer_weights) + loss (+ `weight_term` of the
    params' inner gradients), differentiated w.r.t. [x, *params]; the cotangent
    reaching the backward then has a non-zero mean and a component along the output.
    Returns (fn(x), inner gradients, outer gradients).
    """
    with tf.GradientTape() as outer:
        outer.watch(x)
        with tf.GradientTape() as inner:
            inner.watch(x)
            y = fn(x)
            loss = tf.reduce_sum(tf.sin(y) * weights)
        grads = inner.gradient(loss, [x, *params])
        r = tf.reduce_sum(tf.sin(3.0 * grads[0]) * outer_weights) + loss
        if weight_term is not None:
            r += weight_term(*grads[1:])
    return y, grads, outer.gradient(r, [x, *params])


@pytest.mark.parametrize("graph", [False, True], ids=["eager", "tf_function"])
@pytest.mark.parametrize("center_scale", [False, True])
def test_batch_norm_closed_form_backward_is_exact_to_second_order(float64, center_scale, graph):
    """The hand-written BN backward (first order) and its hand-written gradient (second
    order, as HAR's outer tape takes it) equal autodiff of the plain composition.

    The outer objective is a non-linear function of the inner gradient plus the loss
    itself, so that the cotangent reaching the BN backward has a non-zero mean and a
    component along y (a squared norm of dx would give neither), and the forward
    path's own gradient is summed in."""
    rng = np.random.default_rng(3)
    x = tf.constant(rng.normal(1.0, 2.0, size=(6, 3, 2, 4)))
    gamma = rng.normal(size=4) if center_scale else np.ones(4)
    beta = rng.normal(size=4) if center_scale else np.zeros(4)
    weights = tf.constant(rng.normal(size=(6, 3, 2, 4)))
    outer_weights = tf.constant(rng.normal(size=(6, 3, 2, 4)))
    layer = BatchNormalization(center=center_scale, scale=center_scale, epsilon=1e-5)
    layer.build(x.shape)
    if center_scale:
        layer.gamma.assign(gamma)
        layer.beta.assign(beta)

    def second_order(fn):
        def run(x):
            _, (g,), (h,) = _double_backprop(fn, x, weights, outer_weights)
            return g, h

        return tf.function(run)(x) if graph else run(x)

    g_fast, h_fast = second_order(lambda t: layer(t, training=True))
    g_ref, h_ref = second_order(lambda t: _plain_batch_norm(t, gamma, beta))
    np.testing.assert_allclose(g_fast, g_ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(h_fast, h_ref, rtol=1e-9, atol=1e-11)
    assert np.abs(h_ref).max() > 1e-3  # the second-order term is not trivially zero


@pytest.mark.parametrize("shape", [(40, 4), (6, 5, 4), (6, 3, 2, 4), (3, 2, 3, 2, 4)])
def test_fused_batch_norm_path_matches_float64_composition(shape):
    """float32 on CPU takes the fused kernels (FusedBatchNormV3 / FusedBatchNormGradV3)
    for the forward and every J product; both orders of derivatives and the moving
    statistics equal float64 autodiff of the plain composition to float32 round-off,
    for every rank the reshape to 4-D handles. The inputs have a mean far from zero,
    where a one-pass variance would lose digits."""
    rng = np.random.default_rng(5)
    x64 = rng.normal(3.0, 0.5, size=shape)
    gamma, beta = rng.normal(size=shape[-1]), rng.normal(size=shape[-1])
    weights, outer_weights = rng.normal(size=shape), rng.normal(size=shape)
    layer = BatchNormalization(momentum=0.0, epsilon=1e-5)
    layer.build(shape)
    layer.gamma.assign(gamma)
    layer.beta.assign(beta)

    def second_order(fn, dtype):
        w, ow = tf.constant(weights, dtype), tf.constant(outer_weights, dtype)

        def run(x):
            y, (g,), (h,) = _double_backprop(fn, x, w, ow)
            return y, g, h

        return tf.function(run), tf.constant(x64, dtype)

    fast, x32 = second_order(lambda t: layer(t, training=True), tf.float32)
    op_types = {op.type for op in fast.get_concrete_function(x32).graph.get_operations()}
    assert {"FusedBatchNormV3", "FusedBatchNormGradV3"} <= op_types
    got = fast(x32)
    plain, x_ref = second_order(lambda t: _plain_batch_norm(t, gamma, beta), tf.float64)
    want = plain(x_ref)
    for name, a, b in zip(("output", "gradient", "second order"), got, want, strict=True):
        scale = np.abs(b.numpy()).max()
        np.testing.assert_allclose(
            a.numpy() / scale, b.numpy() / scale, rtol=0, atol=3e-5, err_msg=name
        )
    assert np.abs(want[2]).max() > 1e-3
    mean, var = _moments(x_ref)
    # momentum 0: the moving statistics are the last batch's (mean, biased variance).
    np.testing.assert_allclose(layer.moving_mean.numpy(), np.ravel(mean), rtol=1e-6)
    np.testing.assert_allclose(layer.moving_variance.numpy(), np.ravel(var), rtol=1e-4)


@pytest.mark.parametrize("graph", [False, True], ids=["eager", "tf_function"])
@pytest.mark.parametrize("weight_grads_in_objective", [False, True])
def test_fused_channel_affine_matches_float64_autodiff_to_second_order(
    weight_grads_in_objective, graph
):
    """ChannelAffine in float32 on CPU is one fused kernel forward and backward, with a
    hand-written second order. An outer objective of the inner gradients (of the
    input only, as HAR's, or of gamma and beta too, which sends cotangents to every
    output of the backward) gives the same derivatives as float64 autodiff of
    x * gamma + beta."""
    rng = np.random.default_rng(7)
    shape = (6, 3, 2, 4)
    x64, gamma, beta = rng.normal(size=shape), rng.normal(size=4), rng.normal(size=4)
    weights, outer_weights, v = rng.normal(size=shape), rng.normal(size=shape), rng.normal(size=4)
    layer = ChannelAffine()
    layer.build(shape)
    layer.gamma.assign(gamma)
    layer.beta.assign(beta)

    def derivatives(fn, dtype, params):
        w, ow, vv = (tf.constant(a, dtype) for a in (weights, outer_weights, v))

        def weight_term(g_gamma, g_beta):
            return tf.reduce_sum(tf.cos(g_gamma) * vv) + tf.reduce_sum(tf.square(g_beta))

        def run(x):
            term = weight_term if weight_grads_in_objective else None
            _, first, second = _double_backprop(fn, x, w, ow, params, term)
            return (*first, *second)

        return (tf.function(run) if graph else run), tf.constant(x64, dtype)

    fast, x32 = derivatives(layer, tf.float32, [layer.gamma, layer.beta])
    if graph:
        graph_ops = fast.get_concrete_function(x32).graph.get_operations()
        assert {"FusedBatchNormV3", "FusedBatchNormGradV3"} <= {op.type for op in graph_ops}
    got = fast(x32)
    g64, b64 = tf.Variable(gamma), tf.Variable(beta)
    plain, x_ref = derivatives(lambda t: t * g64 + b64, tf.float64, [g64, b64])
    want = plain(x_ref)
    names = ("dx", "dgamma", "dbeta", "d2 x", "d2 gamma", "d2 beta")
    for name, a, b in zip(names, got, want, strict=True):
        scale = np.abs(b.numpy()).max()
        np.testing.assert_allclose(
            a.numpy() / scale, b.numpy() / scale, rtol=0, atol=1e-5, err_msg=name
        )


@pytest.mark.parametrize("center_scale", [False, True])
@pytest.mark.parametrize("shape", [(7, 4), (6, 3, 2, 4)])
def test_inference_batch_norm_is_one_fused_kernel_with_keras_values(shape, center_scale):
    """Inference mode (moving statistics) on CPU float32: one fused kernel, Keras's
    outputs, and both orders of derivatives (HAR's R in inference mode) equal
    float64 autodiff of the plain formula."""
    rng = np.random.default_rng(13)
    channels = shape[-1]
    gamma, beta = rng.normal(size=channels), rng.normal(size=channels)
    mean, var = rng.normal(size=channels), rng.uniform(0.5, 2.0, size=channels)
    weights, outer_weights = rng.normal(size=shape), rng.normal(size=shape)
    ours = BatchNormalization(center=center_scale, scale=center_scale)
    keras_bn = keras.layers.BatchNormalization(center=center_scale, scale=center_scale)
    for layer in (ours, keras_bn):
        layer.build(shape)
        layer.set_weights(([gamma, beta] if center_scale else []) + [mean, var])
    x64 = rng.normal(1.0, 2.0, size=shape)
    x32 = tf.constant(x64, tf.float32)
    np.testing.assert_allclose(ours(x32), keras_bn(x32), rtol=1e-5, atol=1e-5)

    def derivatives(fn, dtype):
        w, ow = tf.constant(weights, dtype), tf.constant(outer_weights, dtype)
        return tf.function(lambda t: _double_backprop(fn, t, w, ow))

    fast = derivatives(lambda t: ours(t, training=False), tf.float32)
    graph_ops = fast.get_concrete_function(x32).graph.get_operations()
    assert {"FusedBatchNormV3", "FusedBatchNormGradV3"} <= {op.type for op in graph_ops}
    g, b = (gamma, beta) if center_scale else (1.0, 0.0)
    plain = derivatives(lambda t: (t - mean) / np.sqrt(var + 1e-3) * g + b, tf.float64)
    got, want = tf.nest.flatten(fast(x32)), tf.nest.flatten(plain(tf.constant(x64)))
    for a, b in zip(got, want, strict=True):
        scale = np.abs(b.numpy()).max()
        np.testing.assert_allclose(a.numpy() / scale, b.numpy() / scale, rtol=0, atol=1e-5)


@pytest.mark.parametrize("case", ["mask", "renorm", "channels_first"])
def test_batch_norm_off_the_fused_path_gives_keras_values(case):
    """Masked inputs and renorm fall back to Keras's computation, and a channel axis
    other than the last to the plain ops: in both modes the outputs and the updated
    moving statistics are Keras's."""
    rng = np.random.default_rng(17)
    # Axis 1 as long as the last: a per-channel factor broadcast along the wrong axis
    # runs without an error.
    shape = (6, 4, 4)
    kwargs = {"renorm": {"renorm": True}, "channels_first": {"axis": 1}}.get(case, {})
    ours, keras_bn = BatchNormalization(**kwargs), keras.layers.BatchNormalization(**kwargs)
    for layer in (ours, keras_bn):
        layer.build(shape)
    # Positive values for every weight (moving variances, renorm's stddev among them).
    keras_bn.set_weights([rng.uniform(0.5, 2.0, size=w.shape) for w in keras_bn.get_weights()])
    ours.set_weights(keras_bn.get_weights())
    mask = tf.constant(rng.random(shape[:-1]) > 0.3) if case == "mask" else None
    x = tf.constant(rng.normal(1.0, 2.0, size=shape), tf.float32)
    for training in (False, True):
        np.testing.assert_allclose(
            ours(x, training=training, mask=mask),
            keras_bn(x, training=training, mask=mask),
            rtol=1e-5,
            atol=1e-5,
            err_msg=f"training={training}",
        )
    for a, b in zip(ours.get_weights(), keras_bn.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5)
    if case == "mask":  # the mask matters: without it the statistics differ
        assert not np.allclose(ours(x, training=True), keras_bn(x, training=True, mask=mask))


def test_masked_batch_norm_is_exact_to_second_order(float64):
    """With a mask the statistics come from Keras's masked moments, which carry no
    stop_gradient: both orders equal autodiff of the plain masked composition."""
    rng = np.random.default_rng(19)
    shape = (6, 5, 4)
    x = tf.constant(rng.normal(1.0, 2.0, size=shape))
    mask = tf.constant(rng.random(shape[:-1]) > 0.3)
    weights, outer_weights = (tf.constant(rng.normal(size=shape)) for _ in "ab")
    layer = BatchNormalization(center=False, scale=False, epsilon=1e-5)
    layer.build(shape)

    def plain(t):
        w = tf.cast(mask, t.dtype)[..., None]
        count = tf.reduce_sum(w, axis=[0, 1], keepdims=True)
        mean = tf.reduce_sum(t * w, axis=[0, 1], keepdims=True) / count
        var = tf.reduce_sum(tf.square(t - mean) * w, axis=[0, 1], keepdims=True) / count
        return (t - mean) * tf.math.rsqrt(var + 1e-5)

    _, (g_ours,), (h_ours,) = _double_backprop(
        lambda t: layer(t, training=True, mask=mask), x, weights, outer_weights
    )
    _, (g_ref,), (h_ref,) = _double_backprop(plain, x, weights, outer_weights)
    # Keras adds 1e-7 to the masked count: a relative change of about 1e-8 here.
    np.testing.assert_allclose(g_ours, g_ref, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(h_ours, h_ref, rtol=1e-6, atol=1e-9)
    assert np.abs(h_ref).max() > 1e-3


def test_fused_kernels_stay_off_when_a_gpu_is_visible(monkeypatch):
    """With a GPU in the process the layers build the plain ops (the GPU kernels keep
    other quantities in their reserve spaces), and give the same derivatives."""
    shape = (6, 3, 2, 4)
    rng = np.random.default_rng(11)
    x = tf.constant(rng.normal(1.0, 2.0, size=shape), tf.float32)
    weights, outer_weights = (tf.constant(rng.normal(size=shape), tf.float32) for _ in "ab")
    layer = keras.Sequential([BatchNormalization(), ChannelAffine()])
    layer.build(shape)

    def traced():
        fn = tf.function(
            lambda t: _double_backprop(lambda u: layer(u, training=True), t, weights, outer_weights)
        )
        ops = {op.type for op in fn.get_concrete_function(x).graph.get_operations()}
        return ops, fn(x)

    fused_ops, fused_values = traced()
    real = tf.config.list_logical_devices
    gpu = tf.config.LogicalDevice(name="/device:GPU:0", device_type="GPU")
    monkeypatch.setattr(
        tf.config, "list_logical_devices", lambda kind=None: [gpu] if kind == "GPU" else real(kind)
    )
    plain_ops, plain_values = traced()
    assert {"FusedBatchNormV3", "FusedBatchNormGradV3"} <= fused_ops
    assert not {"FusedBatchNormV3", "FusedBatchNormGradV3"} & plain_ops
    for a, b in zip(tf.nest.flatten(fused_values), tf.nest.flatten(plain_values), strict=True):
        scale = np.abs(b.numpy()).max()
        np.testing.assert_allclose(a.numpy() / scale, b.numpy() / scale, rtol=0, atol=3e-5)


@pytest.mark.parametrize("graph", [False, True], ids=["eager", "tf_function"])
def test_relu_derivatives_equal_tensorflow_relu_to_second_order(float64, graph):
    """har_tf's ReLU: the same value, gradient and second-order gradient as tf.nn.relu
    (its lean second derivative drops only a zero), and an ERM-style single tape."""
    rng = np.random.default_rng(5)
    x = tf.constant(rng.normal(size=(4, 7)))
    a = tf.constant(rng.normal(size=(4, 7)))
    b = tf.constant(rng.normal(size=(4, 7)))
    layer = ReLU()

    def derivatives(relu):
        def run(x):
            with tf.GradientTape() as outer:
                outer.watch(x)
                with tf.GradientTape() as inner:
                    inner.watch(x)
                    out = relu(tf.sin(2.0 * x) + a)
                    loss = tf.reduce_sum(tf.sin(out) * b)
                g = inner.gradient(loss, x)
                r = tf.reduce_sum(tf.cos(3.0 * g) * a) + loss
            with tf.GradientTape() as single:
                single.watch(x)
                plain = tf.reduce_sum(tf.sin(relu(tf.sin(2.0 * x) + a)) * b)
            return out, g, outer.gradient(r, x), single.gradient(plain, x)

        return tf.function(run)(x) if graph else run(x)

    ours = derivatives(layer)
    reference = derivatives(tf.nn.relu)
    for got, want in zip(ours, reference, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)
    assert np.mean(ours[0] == 0) > 0.2  # some units are off, so the mask matters
    assert np.abs(ours[2]).max() > 1e-2


def test_relu_variants_fall_back_to_keras():
    x = tf.constant([[-2.0, -0.5, 0.5, 3.0, 8.0]])
    for kwargs in ({"max_value": 6.0}, {"negative_slope": 0.1}, {"threshold": 1.0}):
        np.testing.assert_allclose(ReLU(**kwargs)(x), keras.layers.ReLU(**kwargs)(x))
    harness.run_serialization_test(ReLU())


def test_convert_relus_swaps_plain_relus_only_and_keeps_every_value():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,))
    h = keras.layers.Activation("relu", name="act")(keras.layers.Dense(8, name="d1")(inputs))
    h = keras.layers.ReLU(name="plain")(keras.layers.Dense(8, name="d2")(h))
    h = keras.layers.ReLU(max_value=6.0, name="capped")(h)
    h = keras.layers.Dense(8, activation="relu", name="fused")(h)
    h = keras.layers.Activation("tanh", name="tanh")(h)
    model = keras.Model(inputs, keras.layers.Dense(3, name="out")(h))
    converted = convert_relus(model)
    kinds = {layer.name: type(layer) for layer in converted.layers}
    assert kinds["act"] is ReLU and kinds["plain"] is ReLU
    assert kinds["capped"] is keras.layers.ReLU and kinds["tanh"] is keras.layers.Activation
    assert converted.get_layer("fused").get_config()["activation"] == "relu"

    x = tf.constant(np.random.default_rng(0).normal(size=(5, 6)), tf.float32)

    def derivatives(m):
        """Output, weight gradients and the gradient of their squared norm (2nd order)."""
        with tf.GradientTape() as outer:
            with tf.GradientTape() as inner:
                y = m(x)
                loss = tf.reduce_sum(tf.sin(y))
            grads = inner.gradient(loss, m.trainable_weights)
            norm = tf.add_n([tf.reduce_sum(tf.square(g)) for g in grads])
        return [y, *grads, *outer.gradient(norm, m.trainable_weights)]

    for got, want in zip(derivatives(converted), derivatives(model), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


# Every custom layer of har_tf, with non-default arguments where it has any, so that
# a constructor argument missing from get_config() shows.
SERIALIZED_LAYERS = {
    "BatchNormalization": lambda: BatchNormalization(momentum=0.9, epsilon=1e-2, center=False),
    "ChannelAffine": lambda: ChannelAffine(gamma_initializer="zeros", beta_initializer="ones"),
    "ReLU": lambda: ReLU(max_value=6.0),
    "ShortcutA": lambda: ShortcutA(out_channels=8, strides=3),
}


def test_every_custom_layer_has_a_serialization_test():
    registered = {
        cls.__name__
        for key, cls in keras.saving.get_custom_objects().items()
        if key.startswith("har_tf>")
        and issubclass(cls, keras.layers.Layer)
        and not issubclass(cls, keras.Model)
    }
    assert registered == set(SERIALIZED_LAYERS)


@pytest.mark.parametrize("name", sorted(SERIALIZED_LAYERS))
def test_a_custom_layer_round_trips_and_computes_the_same(name):
    layer = SERIALIZED_LAYERS[name]()
    x = np.random.default_rng(0).normal(size=(2, 5, 5, 3)).astype("float32")
    want = layer(x)
    restored = harness.run_serialization_test(layer)
    restored(x)  # builds its weights
    restored.set_weights(layer.get_weights())
    np.testing.assert_allclose(restored(x), want, rtol=1e-6)
