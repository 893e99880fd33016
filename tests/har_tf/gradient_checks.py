"""Finite-difference check of HARModel's regularized-loss gradient, shared by tests."""

import numpy as np
import tensorflow as tf


def _grads(model, x, y, training):
    with tf.GradientTape() as tape:
        loss = model.regularized_loss(x, y, training=training).loss
    return [tf.convert_to_tensor(g).numpy() for g in tape.gradient(loss, model.trainable_weights)]


def check_against_finite_differences(model, x, y, *, training, directions=3, h=1e-6, rtol=1e-6):
    """Asserts the tape gradient of the full HAR loss matches central differences.

    Run in float64 (the `float64` fixture). Checks `directions` random directions
    over all trainable weights at once.

    Returns:
      (grads, erm_grads): the HAR gradient and the gradient with lam = 0 (model.lam
      is restored), so that a test can assert the regularizer's part is non-trivial.
    """
    weights = model.trainable_weights
    grads = _grads(model, x, y, training)

    def loss_at(delta):
        for w, d in zip(weights, delta, strict=True):
            w.assign_add(d)
        value = float(model.regularized_loss(x, y, training=training).loss)
        for w, d in zip(weights, delta, strict=True):
            w.assign_sub(d)
        return value

    rng = np.random.default_rng(0)
    for _ in range(directions):
        direction = [rng.normal(size=w.shape) for w in weights]
        fd = (loss_at([h * d for d in direction]) - loss_at([-h * d for d in direction])) / (2 * h)
        analytic = sum(float((g * d).sum()) for g, d in zip(grads, direction, strict=True))
        np.testing.assert_allclose(analytic, fd, rtol=rtol)

    lam, model.lam = model.lam, 0.0
    try:
        erm_grads = _grads(model, x, y, training)
    finally:
        model.lam = lam
    return grads, erm_grads
