"""HAR under mixed precision: bfloat16 as is, float16 with the inner gradient loss-scaled."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from har_tf import HARModel
from tests import harness
from tests.har_tf import tiny_nets


@pytest.fixture
def dtype_policy():
    """Returns a setter of the global dtype policy; restores the old one afterwards.

    Keras caches the global policy (layers read it when created), so it is set and
    restored explicitly rather than through floatx.
    """
    old = keras.config.dtype_policy()
    yield keras.mixed_precision.set_dtype_policy
    keras.mixed_precision.set_dtype_policy(old)


def _batch(n=16, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, tiny_nets.IN)).astype("float32")
    y = rng.integers(0, tiny_nets.C, size=n).astype("int32")
    return x, y


def _har(optimizer=None, **compile_kwargs):
    """tiny_backbone(seed=0) under the current global policy; same weights every time."""
    model = HARModel(tiny_nets.tiny_backbone(seed=0), lam=1.0, tau=[1.0, 0.5, 0.8])
    return harness.compile_har(model, optimizer or keras.optimizers.SGD(0.05), **compile_kwargs)


def _float32_r(x, y, **kwargs):
    return _har().regularized_loss(x, y, **kwargs).r.numpy()


@pytest.mark.parametrize("training", [True, False])
def test_mixed_bfloat16_r_is_close_to_float32_and_fit_runs(dtype_policy, training):
    x, y = _batch()
    r32 = _float32_r(x, y, training=training)
    dtype_policy("mixed_bfloat16")
    model = _har()
    assert {w.dtype for w in model.trainable_weights} == {"float32"}
    y_pred, _, _, reg, r = model.regularized_loss(x, y, training=training)
    assert y_pred.dtype == tf.bfloat16 and r.dtype == tf.float32 and reg.dtype == tf.float32
    # bfloat16 keeps 8 significant bits (unit roundoff 2e-3); R goes through the
    # forward pass and the inner backward pass in bfloat16. Measured: up to 1.8%
    # per example, 0.2-0.5% median. Tolerances: 4% each, 1% on average.
    rel = np.abs(r.numpy() / r32 - 1)
    assert rel.max() < 4e-2 and rel.mean() < 1e-2, rel

    h = model.fit(x, y, batch_size=8, epochs=2, verbose=0).history
    assert all(np.isfinite(h[k]).all() for k in ("loss", "ce", "reg")), h
    assert all(v > 0 for v in h["reg"])
    assert {w.dtype for w in model.trainable_weights} == {"float32"}


def test_mixed_float16_inner_gradient_is_loss_scaled(dtype_policy):
    """Gradients of O(1e-8) w.r.t. float16 taps underflow unless the loss is scaled.

    A sample weight of 1e-6 scales the loss, as a large batch of well-fit examples
    does: float16's smallest subnormal is 6e-8.
    """
    x, y = _batch()
    weight = np.full(len(x), 1e-6, "float32")
    r32 = _float32_r(x, y, sample_weight=weight)
    dtype_policy("mixed_float16")

    scaled = _har()  # compile wraps SGD in a LossScaleOptimizer (initial scale 2^15)
    assert isinstance(scaled.optimizer, keras.optimizers.LossScaleOptimizer)
    y_pred, _, _, _, r = scaled.regularized_loss(x, y, sample_weight=weight)
    assert y_pred.dtype == tf.float16
    # float16 keeps 11 significant bits (unit roundoff 5e-4); measured 0.35% max.
    np.testing.assert_allclose(r.numpy(), r32, rtol=2e-2)

    # Without loss scaling the same R is wrong (measured: off by about 100%).
    unscaled = _har(auto_scale_loss=False)
    assert not isinstance(unscaled.optimizer, keras.optimizers.LossScaleOptimizer)
    r_unscaled = unscaled.regularized_loss(x, y, sample_weight=weight).r.numpy()
    assert np.abs(r_unscaled / r32 - 1).max() > 0.5


def test_mixed_float16_fit_runs(dtype_policy):
    dtype_policy("mixed_float16")
    x, y = _batch(n=32, seed=1)
    model = _har()
    h = model.fit(x, y, batch_size=8, epochs=2, verbose=0).history
    assert all(np.isfinite(h[k]).all() for k in ("loss", "ce", "reg")), h
    assert all(v > 0 for v in h["reg"])
    assert {w.dtype for w in model.trainable_weights} == {"float32"}
    assert model.optimizer.iterations.numpy() == 8  # no step skipped for overflow


@pytest.mark.parametrize(
    "optimizer",
    [
        lambda: keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.05)),
        lambda: keras.optimizers.SGD(0.05, loss_scale_factor=1024.0),
    ],
    ids=["LossScaleOptimizer", "loss_scale_factor"],
)
def test_loss_scale_is_undone_exactly(optimizer):
    """In float32 a loss scale must change nothing: not R, not the step taken."""
    x, y = _batch()
    plain, scaled = _har(), _har(optimizer())
    np.testing.assert_allclose(
        scaled.regularized_loss(x, y).r.numpy(), plain.regularized_loss(x, y).r.numpy(), rtol=1e-6
    )
    plain.train_on_batch(x, y)
    scaled.train_on_batch(x, y)
    assert scaled.optimizer.iterations.numpy() == 1
    for a, b in zip(plain.trainable_weights, scaled.trainable_weights, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-7)
