"""A tiny residual network with tapped BNs, and an independent re-implementation.

`reference_forward` recomputes the same network with explicit TensorFlow arithmetic
(matmuls, batch moments, the affine) from the Keras model's weights, written apart
from har_tf, so that tests can check HARModel's regularizer against it.
"""

import keras
import numpy as np
import tensorflow as tf

from har_tf.layers import pre_affine_batch_norm

IN, HID, C = 5, 6, 3


def tiny_backbone(seed=0):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((IN,))
    h = keras.layers.Dense(HID, name="fc1")(inp)
    h = pre_affine_batch_norm(h, name="bn1")
    h = keras.layers.ReLU()(h)
    skip = h
    h = keras.layers.Dense(HID, name="fc2")(h)
    h = pre_affine_batch_norm(h, name="bn2")
    h = keras.layers.ReLU()(keras.layers.Add()([h, skip]))
    out = keras.layers.Dense(C, name="logits")(h)
    model = keras.Model(inp, out)
    # Non-trivial affine parameters and moving statistics, so that nothing is 1 or 0.
    rng = np.random.default_rng(seed + 1)
    for name in ("bn1", "bn2"):
        model.get_layer(f"{name}_affine").set_weights(
            [rng.uniform(0.5, 1.5, HID), rng.normal(0, 0.3, HID)]
        )
        model.get_layer(name).set_weights([rng.normal(0, 0.2, HID), rng.uniform(0.5, 2, HID)])
    return model


def reference_forward(model, x, *, training, tape):
    """Logits and the two x_hat tensors, from explicit ops; x_hats are watched on tape."""

    def dense(name, h):
        w, b = model.get_layer(name).get_weights()
        return h @ tf.constant(w, h.dtype) + tf.constant(b, h.dtype)

    def norm(name, h):
        bn = model.get_layer(name)
        if training:
            mean = tf.reduce_mean(h, axis=0)
            var = tf.reduce_mean(tf.square(h - mean), axis=0)  # biased, as BN uses
        else:
            mean, var = (tf.constant(v, h.dtype) for v in bn.get_weights())
        x_hat = (h - mean) / tf.sqrt(var + bn.epsilon)
        # Differentiate w.r.t. x_hat: cut it from its producers and watch it.
        x_hat = tf.identity(x_hat)
        tape.watch(x_hat)
        g, b = model.get_layer(f"{name}_affine").get_weights()
        return x_hat, x_hat * tf.constant(g, h.dtype) + tf.constant(b, h.dtype)

    x = tf.constant(x)
    xh1, h = norm("bn1", dense("fc1", x))
    skip = tf.nn.relu(h)
    xh2, h = norm("bn2", dense("fc2", skip))
    h = tf.nn.relu(h + skip)
    return dense("logits", h), [xh1, xh2]


def reference_r(model, x, y, *, training, aggregation="official"):
    """R_i from the gradient of the batch-mean CE w.r.t. each x_hat, sliced per example."""
    with tf.GradientTape(persistent=True) as tape:
        logits, x_hats = reference_forward(model, x, training=training, tape=tape)
        ce = tf.reduce_mean(
            tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.constant(y), logits=logits)
        )
    grads = [tape.gradient(ce, xh).numpy() for xh in x_hats]
    norms = np.stack([np.sqrt((g**2).sum(axis=1)) for g in grads])  # [layers, B]
    return norms.sum(0) if aggregation == "official" else np.sqrt((norms**2).sum(0))
