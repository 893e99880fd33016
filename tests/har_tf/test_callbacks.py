import keras
import numpy as np
import pytest

from har_tf import tau
from har_tf.callbacks import DeferredReweighting
from tests.har_tf import tiny_nets


def _data(n=24):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, tiny_nets.IN)).astype("float32"), rng.integers(0, 3, n).astype(
        "int32"
    )


@pytest.mark.parametrize("lam", [0.0, 1.0])
def test_class_weights_follow_pytorch_weighted_mean(lam, tiny_har):
    x, y = _data()
    model = tiny_har(lam=lam, optimizer=keras.optimizers.SGD(0.01))
    weights = np.array([3.0, 1.0, 0.5], "float32")
    model.set_class_weights(weights)
    _, _, ce, _, _ = model.regularized_loss(x, y, training=False)
    logits = model(x, training=False).numpy().astype(np.float64)
    logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    nll = -logp[np.arange(len(y)), y]
    expected = (weights[y] * nll).sum() / weights[y].sum()  # F.cross_entropy(weight=w)
    np.testing.assert_allclose(float(ce), expected, rtol=1e-5)
    model.set_class_weights(None)
    np.testing.assert_allclose(
        float(model.regularized_loss(x, y, training=False).ce), nll.mean(), rtol=1e-5
    )


def test_deferred_reweighting_switches_on_at_start_epoch(tiny_har):
    x, y = _data()
    model = tiny_har(optimizer=keras.optimizers.SGD(0.01))
    counts = [10, 100, 1000]
    seen = []
    probe = keras.callbacks.LambdaCallback(
        on_epoch_begin=lambda epoch, logs: seen.append(np.array(model.class_weights))
    )
    drw = DeferredReweighting(counts, start_epoch=2, beta=0.999)
    model.fit(x, y, epochs=4, batch_size=8, verbose=0, callbacks=[drw, probe])
    expected = tau.class_balanced_weights(counts, beta=0.999)
    np.testing.assert_allclose(seen[0], 1.0)
    np.testing.assert_allclose(seen[1], 1.0)
    np.testing.assert_allclose(seen[2], expected, rtol=1e-6)
    np.testing.assert_allclose(seen[3], expected, rtol=1e-6)


def test_bad_class_weights_and_start_epoch(tiny_har):
    model = tiny_har(optimizer=keras.optimizers.SGD(0.01))
    with pytest.raises(ValueError, match="non-negative"):
        model.set_class_weights([1.0, -1.0, 1.0])
    with pytest.raises(ValueError, match="start_epoch"):
        DeferredReweighting([1, 2, 3], start_epoch=-1)
