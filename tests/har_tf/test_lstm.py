"""imdb_bilstm: structure, exact double backprop through masked BiLSTMs, R, cuDNN guard."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from har_tf import HARModel
from har_tf.models import imdb_bilstm, rnn_tap_layers
from tests import harness
from tests.har_tf import gradient_checks

VOCAB, T = 20, 5


def _tokens(lengths, seed=0):
    """Right-padded int ids [B, T] (0 = padding) with the given real lengths."""
    rng = np.random.default_rng(seed)
    x = rng.integers(1, VOCAB, size=(len(lengths), T)).astype("int32")
    for i, n in enumerate(lengths):
        x[i, n:] = 0
    return x


def _tiny(seed=0, **kwargs):
    keras.utils.set_random_seed(seed)
    kwargs = {"embedding_dim": 4, "units": 3, "dropout": 0.0, **kwargs}
    return imdb_bilstm(vocab_size=VOCAB, **kwargs)


def _har(backbone, **kwargs):
    return harness.har_model(
        backbone,
        tap_layers=rnn_tap_layers(backbone),
        optimizer=keras.optimizers.Adam(1e-2),
        compile_kwargs={"metrics": ["accuracy"]},
        **kwargs,
    )


def test_structure_taps_and_non_cudnn_default():
    model = imdb_bilstm(vocab_size=100, embedding_dim=8, units=5, num_layers=3, num_classes=4)
    assert rnn_tap_layers(model) == ["bilstm1", "bilstm2", "bilstm3"]
    assert [layer.name for layer in model.layers] == [
        "tokens",
        "embedding",
        "bilstm1",
        "bilstm2",
        "bilstm3",
        "dropout",
        "logits",
    ]
    assert model.get_layer("embedding").mask_zero
    assert model.get_layer("dropout").rate == 0.5
    # Every layer but the last returns the sequence; both directions are concatenated.
    assert tuple(model.get_layer("bilstm2").output.shape) == (None, None, 10)
    assert tuple(model.get_layer("bilstm3").output.shape) == (None, 10)
    lstms = [
        layer
        for layer in model._flatten_layers(include_self=False)
        if isinstance(layer, keras.layers.LSTM)
    ]
    assert len(lstms) == 6 and all(layer.use_cudnn is False for layer in lstms)
    assert model.predict(_tokens([5, 2, 1]), verbose=0).shape == (3, 4)
    # The paper's model: 2 layers of 256 units per direction.
    paper = imdb_bilstm(vocab_size=1000, sequence_length=T)
    assert rnn_tap_layers(paper) == ["bilstm1", "bilstm2"]
    assert tuple(paper.get_layer("bilstm2").output.shape) == (None, 512)
    assert tuple(paper.input.shape) == (None, T)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"vocab_size": 1},
        {"vocab_size": 10, "num_layers": 0},
        {"vocab_size": 10, "dropout": 1.0},
        {"vocab_size": 10, "num_classes": 1},
        {"vocab_size": 10, "use_cudnn": "yes"},
    ],
)
def test_bad_arguments_are_rejected(kwargs):
    with pytest.raises(ValueError):
        imdb_bilstm(**kwargs)


def test_padding_is_masked():
    """Padded steps change nothing: a padded sequence scores as its unpadded self."""
    model = _tiny()
    x = _tokens([3])
    np.testing.assert_allclose(
        model.predict(x, verbose=0), model.predict(x[:, :3], verbose=0), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("aggregation", ["official", "paper"])
def test_r_equals_one_example_at_a_time_reference(aggregation):
    """R_i = sum over taps of ||d loss_i / d tap|| / B, from unpadded single examples.

    The reference runs each example alone, without its padding (so without a mask),
    on its own tape: it checks batching, masking and HARModel's gradient at once.
    """
    backbone = _tiny(seed=1, dropout=0.5)  # dropout is off in inference mode
    model = _har(backbone, lam=1.0, aggregation=aggregation)
    lengths = [5, 3, 1, 4]
    x, y = _tokens(lengths, seed=1), np.array([0, 1, 1, 0], "int32")
    _, _, _, _, r = model.regularized_loss(x, y, training=False)

    probe = keras.Model(
        backbone.input,
        [
            backbone.output,
            backbone.get_layer("bilstm1").output,
            backbone.get_layer("bilstm2").output,
        ],
    )
    expected = []
    for i, n in enumerate(lengths):
        with tf.GradientTape() as tape:
            logits, *taps = probe(x[i : i + 1, :n], training=False)
            tape.watch(taps)
            logp = tf.nn.log_softmax(tf.cast(logits, tf.float64))
            loss = -logp[0, y[i]]
        norms = np.array([np.linalg.norm(g.numpy()) / len(x) for g in tape.gradient(loss, taps)])
        expected.append(norms.sum() if aggregation == "official" else np.sqrt((norms**2).sum()))
    np.testing.assert_allclose(r.numpy(), expected, rtol=1e-5)


def test_padded_positions_get_no_gradient():
    backbone = _tiny(seed=2)
    x, y = _tokens([2, 5], seed=2), np.array([1, 0], "int32")
    probe = keras.Model(backbone.input, [backbone.output, backbone.get_layer("bilstm1").output])
    with tf.GradientTape() as tape:
        logits, h = probe(x, training=False)
        tape.watch(h)
        loss = tf.reduce_sum(
            keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)
        )
    g = tape.gradient(loss, h).numpy()
    assert np.all(g[0, 2:] == 0.0) and np.all(np.abs(g[0, :2]).sum(-1) > 0)
    assert np.all(np.abs(g[1]).sum(-1) > 0)


def test_gradient_of_regularized_loss_matches_finite_differences(float64):
    """Double backprop through masked BiLSTMs (tf.while_loop) is exact.

    Dropout is 0: Keras draws a new dropout mask on every call, which finite
    differences cannot follow. Without dropout, training and inference agree.
    """
    backbone = _tiny(seed=3, sequence_length=T)
    model = _har(backbone, lam=5.0, tau=[0.3, 1.0], weight_decay=1e-2)
    x, y = _tokens([5, 3, 1, 4], seed=3), np.array([0, 1, 1, 0], "int32")
    weights = model.trainable_weights
    assert {w.dtype for w in weights} == {"float64"} and len(weights) == 15
    grads, erm_grads = gradient_checks.check_against_finite_differences(model, x, y, training=True)
    # The regularizer's own gradient is non-trivial, recurrent kernels included.
    for w, g, e in zip(weights, grads, erm_grads, strict=True):
        if "recurrent_kernel" in w.path:
            assert np.abs(g - e).max() > 1e-5, w.path


@pytest.mark.slow
def test_fit_with_dropout_runs_and_learns():
    keras.utils.set_random_seed(0)
    backbone = imdb_bilstm(vocab_size=VOCAB, embedding_dim=8, units=8)  # dropout 0.5
    model = _har(backbone, lam=1.0)
    rng = np.random.default_rng(0)
    x = _tokens(rng.integers(1, T + 1, size=64), seed=4)
    y = (x == 7).any(axis=1).astype("int32")  # a token's presence decides the class
    h = model.fit(x, y, batch_size=32, epochs=3, verbose=0).history
    assert all(np.isfinite(h["loss"])) and all(r > 0 for r in h["reg"])
    assert h["ce"][-1] < h["ce"][0]


def test_har_refuses_cudnn_rnns_when_a_gpu_is_visible(monkeypatch):
    gpu = tf.config.LogicalDevice(name="/device:GPU:0", device_type="GPU")
    real = tf.config.list_logical_devices
    monkeypatch.setattr(
        tf.config,
        "list_logical_devices",
        lambda device_type=None: [gpu] if device_type == "GPU" else real(device_type),
    )
    cudnn = _tiny(use_cudnn="auto")
    with pytest.raises(ValueError, match="use_cudnn=False"):
        HARModel(cudnn, lam=1.0, tap_layers=rnn_tap_layers(cudnn))
    HARModel(cudnn, lam=0.0, tap_layers=rnn_tap_layers(cudnn))  # ERM: first order only
    plain = _tiny()
    HARModel(plain, lam=1.0, tap_layers=rnn_tap_layers(plain))
    monkeypatch.undo()
    if not tf.config.list_logical_devices("GPU"):
        HARModel(cudnn, lam=1.0, tap_layers=rnn_tap_layers(cudnn))  # no GPU, no cuDNN
