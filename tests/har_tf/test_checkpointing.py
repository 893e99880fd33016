"""HARModel(checkpoint_layers=...): the recomputing step computes exact HAR's step.

The reference is HARModel's ordinary step (one double backward over kept tensors),
itself checked against an independent implementation and finite differences in
test_har_model.py / gradient_checks.py. Both models here wrap the same backbone, so
they share every variable; each run starts from the same weights and state.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from har_tf import HARModel
from har_tf.models import (
    block_output_layers,
    bn_tap_layers,
    cifar_resnet,
    imdb_bilstm,
    resnet50,
    rnn_tap_layers,
)
from tests import harness
from tests.har_tf import tiny_nets

NUM_CLASSES = 4


def _resnet():
    keras.utils.set_random_seed(0)
    return cifar_resnet(depth=8, input_shape=(8, 8, 3), num_classes=NUM_CLASSES)


def _batch(n=6, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8, 8, 3)).astype("float32")
    # Per-example shifts: the BN batch statistics couple the examples strongly.
    x += np.linspace(-1, 1, n, dtype="float32")[:, None, None, None]
    return tf.constant(x), tf.constant(rng.integers(0, NUM_CLASSES, n).astype("int32"))


def _pair(backbone, cuts, **kwargs):
    kwargs = {"lam": 10.0, "tau": [0.2, 0.5, 1.0, 0.7], "weight_decay": 1e-3, **kwargs}
    models = [
        HARModel(backbone, **kwargs),
        HARModel(backbone, checkpoint_layers=cuts, **kwargs),
    ]
    for model in models:
        harness.compile_har(model, keras.optimizers.SGD(0.1, momentum=0.9))
    return models


def _step(model, x, y, state, *, eager=False):
    """(loss, ce, reg, gradients, non-trainable state after) of one step's objective."""
    for v, value in zip(model.backbone.non_trainable_variables, state, strict=True):
        v.assign(value)

    def gradients(x, y):
        _, loss, ce, reg, grads = model.step_gradients(x, y)
        return loss, ce, reg, grads

    loss, ce, reg, grads = (gradients if eager else tf.function(gradients))(x, y)
    after = [v.numpy() for v in model.backbone.non_trainable_variables]
    return float(loss), float(ce), float(reg), [g.numpy() for g in grads], after


def _assert_same_step(ref, ckpt):
    np.testing.assert_allclose(ckpt[:3], ref[:3], rtol=1e-6)
    # Float32 round-off of different evaluation orders; the gradients' scale is the
    # largest entry of each. A missing term of the outer pass is off by O(1).
    for g_ref, g in zip(ref[3], ckpt[3], strict=True):
        np.testing.assert_allclose(g, g_ref, rtol=0, atol=2e-5 * np.abs(g_ref).max())
    for s_ref, s in zip(ref[4], ckpt[4], strict=True):  # moving statistics: updated once
        np.testing.assert_array_equal(s, s_ref)


@pytest.mark.parametrize(
    "aggregation,scale,eager",
    [
        ("official", "official", False),
        ("paper", "per_example", False),
        ("official", "official", True),
    ],
)
def test_checkpointed_gradients_equal_exact_har(aggregation, scale, eager):
    backbone = _resnet()
    cuts = block_output_layers(backbone)
    assert cuts == ["stage1_block1_out", "stage2_block1_out"]  # 3 segments
    ref, ckpt = _pair(backbone, cuts, aggregation=aggregation, scale=scale)
    x, y = _batch()
    state = [v.numpy() for v in backbone.non_trainable_variables]
    a = _step(ref, x, y, state, eager=eager)
    b = _step(ckpt, x, y, state, eager=eager)
    assert a[2] > 0
    _assert_same_step(a, b)
    # The moving statistics moved (so "updated once" above is not vacuous).
    assert any(not np.allclose(s0, s1) for s0, s1 in zip(state, a[4], strict=True))


def test_a_segment_without_taps_and_a_cut_that_is_a_tap():
    """The stem's segment has no tap (skipped going up); a tapped layer can be a cut."""
    backbone = _resnet()
    ref, ckpt = _pair(backbone, ["stem_relu", "stage2_block1_out"])
    x, y = _batch()
    state = [v.numpy() for v in backbone.non_trainable_variables]
    _assert_same_step(_step(ref, x, y, state), _step(ckpt, x, y, state))

    backbone = tiny_nets.tiny_backbone()  # bn1 is tapped and nothing bypasses it
    ref, ckpt = _pair(backbone, ["bn1"], tau=[0.2, 0.5, 1.0])
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(8, tiny_nets.IN)).astype("float32"))
    y = tf.constant(rng.integers(0, tiny_nets.C, 8).astype("int32"))
    state = [v.numpy() for v in backbone.non_trainable_variables]
    _assert_same_step(_step(ref, x, y, state), _step(ckpt, x, y, state))


def test_dropout_masks_are_the_same_in_every_recomputation():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((tiny_nets.IN,))
    h = keras.layers.Dense(16, activation="tanh", name="fc1")(inputs)
    h = keras.layers.Dropout(0.5, seed=3, name="drop1")(h)
    h = keras.layers.Dense(16, activation="tanh", name="fc2")(h)
    h = keras.layers.Dropout(0.5, seed=4, name="drop2")(h)
    logits = keras.layers.Dense(NUM_CLASSES, name="logits")(h)
    backbone = keras.Model(inputs, logits)
    ref, ckpt = _pair(backbone, ["drop1"], tap_layers=["fc1", "fc2"])
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(8, tiny_nets.IN)).astype("float32"))
    y = tf.constant(rng.integers(0, NUM_CLASSES, 8).astype("int32"))
    state = [v.numpy() for v in backbone.non_trainable_variables]
    a, b = _step(ref, x, y, state), _step(ckpt, x, y, state)
    _assert_same_step(a, b)
    # The seed states advanced (once): dropout drew new masks.
    assert any(not np.array_equal(s0, s1) for s0, s1 in zip(state, a[4], strict=True))


@pytest.mark.parametrize("reg_every", [1, 2])
def test_fit_with_checkpointing_matches_fit_without(reg_every):
    backbone = _resnet()
    ref, ckpt = _pair(backbone, block_output_layers(backbone), reg_every=reg_every)
    initial = ref.get_weights()
    rng = np.random.default_rng(2)
    x = rng.normal(size=(20, 8, 8, 3)).astype("float32")
    y = rng.integers(0, NUM_CLASSES, 20).astype("int32")
    results = []
    for model in (ref, ckpt):
        model.set_weights(initial)
        history = model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
        results.append((history.history, model.get_weights()))
    (h_ref, w_ref), (h, w) = results
    for key in ("loss", "ce", "reg"):
        np.testing.assert_allclose(h[key], h_ref[key], rtol=1e-5, err_msg=key)
    for a, b in zip(w_ref, w, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)
    assert not all(np.allclose(a, b) for a, b in zip(initial, w, strict=True))


def test_checkpoint_layers_survive_saving(tmp_path):
    backbone = _resnet()
    _, model = _pair(backbone, block_output_layers(backbone))
    loaded = harness.run_model_saving_test(model, tmp_path / "model.keras")
    assert loaded.checkpoint_layers == ["stage1_block1_out", "stage2_block1_out"]
    assert loaded.get_config()["checkpoint_layers"] == model.checkpoint_layers


def test_bad_cuts_are_refused_with_the_reason():
    backbone = tiny_nets.tiny_backbone()
    # fc2 is read by bn2 only, but the block's skip connection carries the ReLU output
    # around it: the segment after "fc2" would need a second input.
    with pytest.raises(ValueError, match="depend on one tensor only"):
        HARModel(backbone, lam=1.0, checkpoint_layers=["fc2"])
    with pytest.raises(ValueError, match="'nope' is not a layer"):
        HARModel(backbone, lam=1.0, checkpoint_layers=["nope"])
    with pytest.raises(ValueError, match="input or output"):
        HARModel(backbone, lam=1.0, checkpoint_layers=["logits"])
    with pytest.raises(ValueError, match="is empty"):
        HARModel(backbone, lam=1.0, checkpoint_layers=[])
    with pytest.raises(ValueError, match="twice"):
        HARModel(backbone, lam=1.0, checkpoint_layers=["fc1", "fc1"])
    # A masked sequence: bilstm2 reads the embedding's padding mask across the cut.
    text = imdb_bilstm(vocab_size=50, sequence_length=6, units=4, embedding_dim=3)
    with pytest.raises(ValueError, match="segment 1 .from 'bilstm1' to the logits.*mask"):
        HARModel(text, lam=1.0, tap_layers=rnn_tap_layers(text), checkpoint_layers=["bilstm1"])
    # The ReLU before the skip is a true cut.
    relu = next(layer.name for layer in backbone.layers if layer.name.startswith("re_lu"))
    HARModel(backbone, lam=1.0, checkpoint_layers=[relu])


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_checkpointed_step_under_mixed_precision(policy):
    """bfloat16 as is; float16 with the LossScaleOptimizer's scale (2^15 here) in the
    inner gradient and the outer objective, which a missed scale would be off by."""
    old = keras.config.dtype_policy()
    keras.mixed_precision.set_dtype_policy(policy)
    try:
        backbone = _resnet()
        ref, ckpt = _pair(backbone, block_output_layers(backbone))
        x, y = _batch()
        state = [v.numpy() for v in backbone.non_trainable_variables]
        a, b = _step(ref, x, y, state), _step(ckpt, x, y, state)
    finally:
        keras.mixed_precision.set_dtype_policy(old)
    np.testing.assert_allclose(b[:3], a[:3], rtol=1e-3)
    # Half-precision round-off of different evaluation orders; measured 1.2% (bfloat16)
    # and 0.7% (float16) of the largest entry.
    for g_ref, g in zip(a[3], b[3], strict=True):
        np.testing.assert_allclose(g, g_ref, rtol=0, atol=4e-2 * np.abs(g_ref).max())


def test_block_output_layers_cut_keras_applications_resnet50():
    """Its 16 blocks' outputs are clean cuts (every segment has one input)."""
    backbone = resnet50(num_classes=5, input_shape=(32, 32, 3))
    cuts = block_output_layers(backbone)
    assert len(cuts) == 15 and cuts[0] == "conv2_block1_out"
    model = HARModel(backbone, lam=1.0, tap_layers=bn_tap_layers(backbone), checkpoint_layers=cuts)
    segments = model.segments
    assert len(segments.models) == 16
    # Every tap in exactly one segment, in the segment that computes it.
    assert sorted(t for taps in segments.taps for t in taps) == list(range(53))
