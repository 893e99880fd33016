"""The default float32 path of HAR equals float64 autodiff at real sizes.

Loss, reg and every weight gradient of the HAR objective (lam 10, per-class tau) on
a softplus ResNet, computed the way a training step computes them (fused BN kernels,
hand-written BN rules, oneDNN convolutions where on), against the same weights and
batch in float64 on Keras's autodiffed BN (tests/har_tf/exactness.py). Softplus keeps
the gradient continuous; with ReLU, rounding flips units and the gradient jumps
(docs/EXACTNESS.md). The tolerances are a few times the errors measured on this
project's hosts (docs/EXACTNESS.md has them).
"""

import functools

import numpy as np
import pytest
import tensorflow as tf

from har_tf.layers import batch_normalization
from tests.har_tf import exactness

# Real sizes: 16/32/64 channels. The fast case is ResNet-8 (one block per stage);
# ResNet-32 and batch 128 are slow on a 2-core host.
SPECS = {
    "resnet8_batch16": (dict(depth=8, input_shape=(32, 32, 3), activation="softplus"), 16),
    "resnet32_batch16": (dict(depth=32, input_shape=(32, 32, 3), activation="softplus"), 16),
    "resnet8_batch128": (dict(depth=8, input_shape=(16, 16, 3), activation="softplus"), 128),
}
SLOW = {"resnet32_batch16", "resnet8_batch128"}
# A few times the worst errors measured on this project's hosts (docs/EXACTNESS.md).
# The regularizer's own weight gradient is a smaller quantity, so its relative error
# is larger.
SCALAR_RTOL = 1e-6
GRAD_RTOL = 1e-4
REG_GRAD_RTOL = 1e-3


@functools.cache
def _case(name):
    """(spec, float32 weights, x, y, float64 reference pieces), computed once per spec."""
    spec, size = SPECS[name]
    weights = exactness.har_model(spec).get_weights()
    x, y = exactness.batch(spec, size)
    reference = exactness.har_model(spec, "float64", reference=True, weights=weights)
    return spec, weights, x, y, exactness.pieces(reference, x, y)


def _assert_close(got, want):
    errors = exactness.relative_errors(got, want)
    message = f"relative errors {errors}"
    assert errors["loss"] < SCALAR_RTOL, message
    assert errors["reg"] < SCALAR_RTOL, message
    assert errors["grads"] < GRAD_RTOL, message
    assert errors["reg_grads"] < REG_GRAD_RTOL, message
    return errors


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=[pytest.mark.slow] if n in SLOW else []) for n in SPECS]
)
def test_default_float32_path_equals_float64_autodiff(name):
    spec, weights, x, y, want = _case(name)
    got = exactness.pieces(exactness.har_model(spec, weights=weights), x, y)
    _assert_close(got, want)


@pytest.mark.slow
def test_float32_with_onednn_off_equals_float64_autodiff(tmp_path):
    spec, weights, x, y, want = _case("resnet32_batch16")
    got, onednn = exactness.pieces_in_child(spec, weights, x, y, "0", tmp_path)
    assert not onednn
    _assert_close(got, want)


def test_a_second_order_rule_that_holds_the_statistics_constant_fails(monkeypatch):
    """The comparison catches a wrong second derivative of BN: with the rule's
    cotangents to y and rstd dropped (the batch statistics held constant in the
    second order) the worst gradient error is far above the tolerance."""
    spec, weights, x, y, want = _case("resnet8_batch16")
    exact = batch_normalization._differentiable_backward

    def constant_statistics(dy, y, rstd, axes, epsilon):
        return exact(dy, tf.stop_gradient(y), tf.stop_gradient(rstd), axes, epsilon)

    monkeypatch.setattr(batch_normalization, "_differentiable_backward", constant_statistics)
    got = exactness.pieces(exactness.har_model(spec, weights=weights), x, y)
    errors = exactness.relative_errors(got, want)
    assert errors["reg_grads"] > 10 * REG_GRAD_RTOL, errors
    # The forward pass is untouched.
    np.testing.assert_allclose(got["loss"], want["loss"], rtol=SCALAR_RTOL)
