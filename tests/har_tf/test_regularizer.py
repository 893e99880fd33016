"""R(x) and the HAR loss against independent references."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from har_tf import HARModel, layers, objective, regularizer
from tests import harness
from tests.har_tf import gradient_checks, tiny_nets


def _batch(n=7, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, tiny_nets.IN)).astype(keras.config.floatx())
    y = rng.integers(0, tiny_nets.C, size=n).astype("int32")
    return x, y


def _har(backbone, **kwargs):
    return harness.har_model(backbone, compile_kwargs={"metrics": ["accuracy"]}, **kwargs)


def _penalty(grads, **kwargs):
    return regularizer.penalty_from_squared_norms(regularizer.squared_norms(grads), **kwargs)


def test_jacobian_penalty_hand_computed():
    g1 = tf.constant([[3.0, 4.0], [0.0, 0.0]])
    g2 = tf.constant([[[1.0], [0.0]], [[0.0], [2.0]]])  # a rank-3 layer
    official = _penalty([g1, g2], aggregation="official", epsilon=0.0)
    paper = _penalty([g1, g2], aggregation="paper", epsilon=0.0)
    np.testing.assert_allclose(official, [6.0, 2.0])
    np.testing.assert_allclose(paper, [np.sqrt(26.0), 2.0], rtol=1e-6)


def test_jacobian_penalty_gradient_is_finite_at_zero():
    g = tf.Variable(tf.zeros((2, 3)))
    with tf.GradientTape() as tape:
        r = tf.reduce_sum(_penalty([g]))
    assert np.all(np.isfinite(tape.gradient(r, g).numpy()))


def test_jacobian_penalty_rejects_unknown_aggregation():
    with pytest.raises(ValueError, match="aggregation"):
        _penalty([tf.ones((1, 1))], aggregation="max")


@pytest.mark.parametrize("aggregation", ["official", "paper"])
def test_r_inference_mode_equals_per_example_loop(aggregation):
    """With BN in inference mode, example i's slice is (1/B) x its own loss gradient."""
    backbone = tiny_nets.tiny_backbone()
    model = _har(backbone, lam=1.0, aggregation=aggregation)
    x, y = _batch()
    _, _, _, _, r = model.regularized_loss(x, y, training=False)

    expected = []
    for i in range(len(x)):
        norms = []
        for layer in ("bn1", "bn2"):  # one layer at a time
            probe = keras.Model(backbone.input, [backbone.output, backbone.get_layer(layer).output])
            with tf.GradientTape() as tape:
                logits, h = probe(x[i : i + 1], training=False)
                tape.watch(h)
                loss = keras.losses.sparse_categorical_crossentropy(
                    y[i : i + 1], logits, from_logits=True
                )
            g = tape.gradient(loss, h).numpy() / len(x)
            norms.append(np.linalg.norm(g))
        norms = np.array(norms)
        expected.append(norms.sum() if aggregation == "official" else np.sqrt((norms**2).sum()))
    np.testing.assert_allclose(r.numpy(), expected, rtol=1e-5)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("aggregation", ["official", "paper"])
def test_r_equals_independent_reimplementation(training, aggregation):
    """Training mode couples examples through batch statistics; the reference has them."""
    backbone = tiny_nets.tiny_backbone()
    model = _har(backbone, lam=1.0, aggregation=aggregation)
    x, y = _batch(n=9, seed=1)
    expected = tiny_nets.reference_r(backbone, x, y, training=training, aggregation=aggregation)
    _, _, _, _, r = model.regularized_loss(x, y, training=training)
    np.testing.assert_allclose(r.numpy(), expected, rtol=1e-5)


def test_per_example_scale_is_batch_size_times_official():
    x, y = _batch(n=8)
    r_official = _har(tiny_nets.tiny_backbone(), lam=1.0).regularized_loss(x, y).r
    r_per_ex = (
        _har(tiny_nets.tiny_backbone(), lam=1.0, scale="per_example").regularized_loss(x, y).r
    )
    np.testing.assert_allclose(r_per_ex.numpy(), 8 * r_official.numpy(), rtol=1e-5)


def test_loss_combines_ce_tau_and_r():
    x, y = _batch(n=8)
    tau = np.array([0.2, 1.0, 0.0], dtype="float32")
    model = _har(tiny_nets.tiny_backbone(), lam=3.0, tau=tau)
    _, loss, ce, reg, r = model.regularized_loss(x, y)
    np.testing.assert_allclose(reg.numpy(), np.mean(tau[y] * r.numpy()), rtol=1e-6)
    np.testing.assert_allclose(loss.numpy(), ce.numpy() + 3.0 * reg.numpy(), rtol=1e-6)
    # Per-example tau carried by the batch overrides the class table.
    _, _, _, reg_b, _ = model.regularized_loss(x, y, tau=np.ones(8, "float32"))
    np.testing.assert_allclose(reg_b.numpy(), np.mean(r.numpy()), rtol=1e-6)


@pytest.mark.parametrize("training", [True, False])
def test_gradient_of_regularized_loss_matches_finite_differences(float64, training):
    backbone = tiny_nets.tiny_backbone(seed=3)
    model = _har(backbone, lam=5.0, tau=[0.3, 1.0, 0.6], weight_decay=1e-2)
    x, y = _batch(n=6, seed=2)
    assert {w.dtype for w in model.trainable_weights} == {"float64"}
    grads, erm_grads = gradient_checks.check_against_finite_differences(
        model, x, y, training=training
    )
    # And the regularizer's own contribution is non-trivial (not just the CE).
    assert max(float(np.abs(g - e).max()) for g, e in zip(grads, erm_grads, strict=True)) > 1e-4


def test_stock_keras_batch_norm_has_wrong_second_derivative_and_is_rejected(float64):
    """Documents why har_tf has its own BN: tf.nn.moments breaks double backprop."""
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(5, 3)))
    w = tf.Variable(rng.normal(size=(3, 3)))
    bias = tf.Variable(np.zeros(3))

    def grad_norm_gradient(bn):
        with tf.GradientTape() as outer:
            with tf.GradientTape() as inner:
                z = x @ w + bias
                inner.watch(z)
                h = bn(z, training=True)
                loss = tf.reduce_sum(tf.sin(h) * tf.range(1.0, 4.0, dtype=h.dtype))
            # The inner gradient flows back through the BN, as it does in HAR for
            # every tapped layer below another BN.
            # Per-example norms, as R uses (a plain sum of squares would hide the
            # error: the dropped term is constant over the batch, and BN's input
            # gradients sum to zero over the batch).
            r = tf.reduce_sum(tf.norm(inner.gradient(loss, z), axis=1))
        return outer.gradient(r, bias).numpy()

    # Shifting z by a bias changes nothing after a training-mode BN, so the exact
    # gradient of r w.r.t. the bias is 0.
    ours = grad_norm_gradient(layers.BatchNormalization(center=False, scale=False))
    stock = grad_norm_gradient(keras.layers.BatchNormalization(center=False, scale=False))
    np.testing.assert_allclose(ours, 0.0, atol=1e-12)
    assert np.abs(stock).max() > 1e-3

    inp = keras.Input((3,))
    out = keras.layers.Dense(2)(keras.layers.BatchNormalization(center=False, scale=False)(inp))
    plain = keras.Model(inp, out)
    with pytest.raises(ValueError, match="convert_batch_norms"):
        HARModel(plain, lam=1.0)
    converted = layers.convert_batch_norms(plain)
    HARModel(converted, lam=1.0)  # accepted
    np.testing.assert_allclose(converted(x.numpy()), plain(x.numpy()))
    assert type(converted.layers[1]) is layers.BatchNormalization


def test_objective_penalty_and_loss_weights_hand_computed():
    # Two taps, two examples: norms (3, 4) and (4, 3), so official R = (7, 7).
    sq = [tf.constant([9.0, 16.0]), tf.constant([16.0, 9.0])]
    penalty = objective.penalty(
        sq,
        tf.constant([1.0, 0.5]),
        lam=2.0,
        global_batch=tf.constant(2.0),
        aggregation="official",
        epsilon=0.0,
    )
    np.testing.assert_allclose(penalty.r, [7.0, 7.0])
    np.testing.assert_allclose(penalty.reg, (7.0 + 3.5) / 2)  # mean of tau * R
    np.testing.assert_allclose(penalty.reg_loss, 2.0 * (7.0 + 3.5) / 2)  # lam * that
    # PyTorch's weighted mean: weights w[y] / sum(w[y]) * B, times sample weights.
    w = objective.loss_weights(tf.constant([3.0, 1.0]), [0, 1, 1], [1.0, 2.0, 1.0], 2)
    np.testing.assert_allclose(w, [3 * 3 / 5, 1 * 3 / 5 * 2, 1 * 3 / 5], rtol=1e-6)
