"""Tap points are the model's declaration: HAR on a user's plain MLP (no BN)."""

import keras
import numpy as np
import pytest

from har_tf import HARModel
from tests import harness

IN, H1, H2, C = 5, 6, 4, 3


def _mlp(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((IN,))
    h = keras.layers.Dense(H1, name="my_dense")(inputs)
    h = keras.layers.ReLU(name="my_relu")(h)
    h = keras.layers.Dense(H2, activation="tanh", name="my_dense2")(h)
    logits = keras.layers.Dense(C, name="logits")(h)
    backbone = keras.Model(inputs, logits)
    rng = np.random.default_rng(seed)
    for layer in ("my_dense", "my_dense2"):  # non-zero biases
        w, b = backbone.get_layer(layer).get_weights()
        backbone.get_layer(layer).set_weights([w, rng.normal(0, 0.3, b.shape)])
    return backbone


def _reference_norms(backbone, x, y):
    """||d CE_i / d tap_i|| / B per tap, by hand in NumPy: {tap name: [B] norms}."""
    (w1, b1), (w2, b2), (w3, b3) = (
        backbone.get_layer(n).get_weights() for n in ("my_dense", "my_dense2", "logits")
    )
    x = x.astype(np.float64)
    a1 = np.maximum(x @ w1 + b1, 0.0)  # tap "my_relu"
    a2 = np.tanh(a1 @ w2 + b2)  # tap "my_dense2" (Dense with its activation)
    logits = a2 @ w3 + b3
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    d_logits = p - np.eye(C)[y]  # d CE_i / d logits_i
    d_a2 = d_logits @ w3.T
    d_a1 = (d_a2 * (1 - a2**2)) @ w2.T
    return {
        "my_relu": np.linalg.norm(d_a1, axis=1) / len(x),
        "my_dense2": np.linalg.norm(d_a2, axis=1) / len(x),
    }


def _reference_r(backbone, x, y, aggregation, taps=("my_relu", "my_dense2")):
    norms = _reference_norms(backbone, x, y)
    norms = np.stack([norms[t] for t in taps])
    return norms.sum(0) if aggregation == "official" else np.sqrt((norms**2).sum(0))


def _data(n=32, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, IN)).astype("float32")
    y = ((x[:, 0] > 0).astype(int) + (x[:, 1] > 0.5)).astype("int32")
    return x, y


@pytest.mark.parametrize("aggregation", ["official", "paper"])
def test_r_of_named_dense_and_activation_layers_equals_reference(aggregation):
    backbone = _mlp()
    model = HARModel(
        backbone, lam=1.0, tap_layers=["my_relu", "my_dense2"], aggregation=aggregation
    )
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = _data(n=9, seed=1)
    _, loss, ce, reg, r = model.regularized_loss(x, y)
    np.testing.assert_allclose(r.numpy(), _reference_r(backbone, x, y, aggregation), rtol=1e-5)
    np.testing.assert_allclose(loss.numpy(), ce.numpy() + reg.numpy(), rtol=1e-6)


def test_tap_order_and_subset_are_respected():
    backbone = _mlp()
    x, y = _data(n=8)
    both = HARModel(backbone, lam=1.0, tap_layers=["my_dense2", "my_relu"])
    only = HARModel(backbone, lam=1.0, tap_layers=["my_dense2"], aggregation="paper")
    for m in (both, only):
        m.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    np.testing.assert_allclose(
        both.regularized_loss(x, y).r.numpy(), _reference_r(backbone, x, y, "official"), rtol=1e-5
    )
    # One tap: R is that layer's norm alone.
    np.testing.assert_allclose(
        only.regularized_loss(x, y).r.numpy(),
        _reference_norms(backbone, x, y)["my_dense2"],
        rtol=1e-5,
    )


def test_fit_runs_on_a_user_model_and_default_taps_are_refused():
    x, y = _data(n=64)
    model = harness.har_model(
        _mlp(),
        lam=2.0,
        tap_layers=["my_relu", "my_dense2"],
        compile_kwargs={"metrics": ["accuracy"]},
    )
    h = model.fit(x, y, batch_size=16, epochs=3, verbose=0).history
    assert all(r > 0 for r in h["reg"])
    np.testing.assert_allclose(h["loss"], np.array(h["ce"]) + 2.0 * np.array(h["reg"]), rtol=1e-5)
    assert h["ce"][-1] < h["ce"][0]
    # The default taps are pre-affine BNs; this model has none, so HAR needs a list.
    with pytest.raises(ValueError, match="no tapped activations"):
        HARModel(_mlp(), lam=1.0)
    with pytest.raises(ValueError, match="'my_dense3' is not a layer"):
        HARModel(_mlp(), lam=1.0, tap_layers=["my_relu", "my_dense3"])
