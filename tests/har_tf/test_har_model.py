"""HARModel as a Keras citizen: fit/evaluate/predict, metrics, ERM path, saving."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from har_tf import HARModel
from tests import harness
from tests.har_tf import tiny_nets


def _data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, tiny_nets.IN)).astype("float32")
    y = (x[:, 0] > 0).astype("int32") + (x[:, 1] > 1).astype("int32")
    return x, y


def _compiled(**kwargs):
    return harness.har_model(
        tiny_nets.tiny_backbone(),
        optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
        compile_kwargs={"metrics": ["accuracy"]},
        **kwargs,
    )


def test_fit_logs_loss_ce_reg_accuracy_and_loss_is_their_sum():
    x, y = _data()
    model = _compiled(lam=2.0, tau=[1.0, 0.5, 0.25])
    history = model.fit(x, y, batch_size=16, epochs=3, verbose=0)
    h = history.history
    assert set(h) == {"loss", "ce", "reg", "accuracy"}
    assert all(v > 0 for v in h["reg"])
    # Epoch means of equally weighted batches: loss = ce + lam * reg exactly.
    np.testing.assert_allclose(h["loss"], np.array(h["ce"]) + 2.0 * np.array(h["reg"]), rtol=1e-5)
    assert h["ce"][-1] < h["ce"][0]  # it learns


def test_erm_reports_zero_reg_and_evaluate_predict_work():
    x, y = _data()
    model = _compiled(lam=0.0)
    h = model.fit(x, y, batch_size=16, epochs=2, verbose=0).history
    assert h["reg"] == [0.0, 0.0]
    np.testing.assert_allclose(h["loss"], h["ce"], rtol=1e-6)
    results = model.evaluate(x, y, verbose=0, return_dict=True)
    assert {"loss", "accuracy"} <= set(results)
    assert model.predict(x, verbose=0).shape == (64, tiny_nets.C)


def test_metrics_reset_each_epoch():
    x, y = _data()
    model = _compiled(lam=1.0)
    first = model.fit(x, y, batch_size=64, epochs=1, verbose=0).history
    # One batch per epoch: the second epoch's logs are that batch's values at the
    # weights the first epoch left, which the objective gives independently.
    expected = model.regularized_loss(x, y)
    second = model.fit(x, y, batch_size=64, epochs=1, verbose=0).history
    for key, want in (("loss", expected.loss), ("ce", expected.ce), ("reg", expected.reg)):
        np.testing.assert_allclose(second[key][0], float(want), rtol=1e-5)
        # A running mean over both epochs would differ from the batch's own value.
        running = (first[key][0] + float(want)) / 2
        assert abs(running - float(want)) > 1e-4 * abs(float(want))


@pytest.mark.parametrize("lam,expected_tapes", [(0.0, 1), (1.0, 2)])
def test_erm_path_builds_no_second_tape(monkeypatch, lam, expected_tapes):
    created = []

    class CountingTape(tf.GradientTape):
        def __init__(self, *args, **kwargs):
            created.append(1)
            super().__init__(*args, **kwargs)

    model = _compiled(lam=lam)
    traces = []
    train_step = model.train_step

    def counting_train_step(data):
        traces.append(1)
        return train_step(data)

    model.train_step = counting_train_step
    x, y = _data(n=16)
    monkeypatch.setattr(tf, "GradientTape", CountingTape)
    model.train_on_batch(x, y)  # traces train_step (Keras may trace it more than once)
    assert traces
    assert len(created) == expected_tapes * len(traces)


def test_tau_in_batch_dict_and_sample_weight():
    """A batch's own tau and sample_weight (a dict) train exactly as a model whose
    class table holds those tau and whose batches carry the weights the plain way."""
    x, y = _data(n=32)
    table = np.array([1.0, 0.3, 0.05], "float32")
    weights = np.linspace(0.2, 2.0, 32).astype("float32")
    ds = tf.data.Dataset.from_tensor_slices(
        (x, y, {"tau": table[y], "sample_weight": weights})
    ).batch(8)
    model = _compiled(lam=1.0)  # its table is tau = 1: only the batch's tau differs
    h = model.fit(ds, epochs=1, verbose=0, shuffle=False).history
    reference = _compiled(lam=1.0, tau=table)
    ref_ds = tf.data.Dataset.from_tensor_slices((x, y, weights)).batch(8)
    ref_h = reference.fit(ref_ds, epochs=1, verbose=0, shuffle=False).history
    assert h["reg"][0] > 0
    for key in ("loss", "ce", "reg"):
        np.testing.assert_allclose(h[key], ref_h[key], rtol=1e-5)
    backbones = model.backbone.get_weights(), reference.backbone.get_weights()
    for got, want in zip(*backbones, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    model.evaluate(ds, verbose=0)
    with pytest.raises(ValueError, match="unknown keys"):
        model.fit(
            tf.data.Dataset.from_tensor_slices((x, y, {"tua": np.ones(32)})).batch(8),
            verbose=0,
            shuffle=False,
        )


def test_keras_save_load_round_trip(tmp_path):
    x, y = _data()
    model = _compiled(lam=1.5, tau=[0.1, 0.2, 1.0], aggregation="paper", scale="per_example")
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    loaded = harness.run_model_saving_test(model, tmp_path / "m.keras", x)
    np.testing.assert_allclose(loaded.tau.numpy(), [0.1, 0.2, 1.0], rtol=1e-6)
    # Training continues from the loaded optimizer state with the same objective.
    np.testing.assert_allclose(
        loaded.regularized_loss(x, y, training=False).loss,
        model.regularized_loss(x, y, training=False).loss,
        rtol=1e-5,
    )
    # The tapped view shares variables: no weight is saved twice.
    assert len(loaded.weights) == len({id(w) for w in loaded.weights})


def test_set_tau_changes_the_objective_without_recompiling():
    x, y = _data(n=16)
    model = _compiled(lam=1.0, tau=[1.0, 1.0, 1.0])
    reg_before = float(model.regularized_loss(x, y).reg)
    model.set_tau([0.0, 0.0, 0.0])
    assert float(model.regularized_loss(x, y).reg) == 0.0
    assert reg_before > 0
    with pytest.raises(ValueError, match="3 entries"):
        model.set_tau([1.0])
    # NaN (the authors' code gives it to everyone when a class is empty), inf and
    # negative values are refused, and the table is left as it was.
    for bad in ([1.0, np.nan, 1.0], [np.inf, 1.0, 1.0], [1.0, 1.0, -0.5]):
        with pytest.raises(ValueError, match="finite and >= 0"):
            model.set_tau(bad)
        with pytest.raises(ValueError, match="finite and >= 0"):
            HARModel(tiny_nets.tiny_backbone(), lam=1.0, tau=bad)
    np.testing.assert_array_equal(model.tau.numpy(), [0.0, 0.0, 0.0])


def test_invalid_options_are_rejected():
    with pytest.raises(ValueError, match="aggregation"):
        HARModel(tiny_nets.tiny_backbone(), aggregation="max")
    with pytest.raises(ValueError, match="scale"):
        HARModel(tiny_nets.tiny_backbone(), scale="sum")
    with pytest.raises(ValueError, match=">= 0"):
        HARModel(tiny_nets.tiny_backbone(), lam=-1.0)
    for epsilon in (-1e-8, float("nan")):
        with pytest.raises(ValueError, match="epsilon must be >= 0"):
            HARModel(tiny_nets.tiny_backbone(), lam=1.0, epsilon=epsilon)


def _sgd_model(**kwargs):
    keras.utils.set_random_seed(1)
    return harness.har_model(tiny_nets.tiny_backbone(), tau=[1.0, 0.5, 0.25], **kwargs)


def test_reg_every_k_is_har_with_k_lambda_on_every_kth_step_and_erm_between():
    x, y = _data(n=48)
    model = _sgd_model(lam=1.5, reg_every=2)
    logs = model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0).history
    # Reference: plain SGD (no optimizer state), one model per objective, weights
    # handed from one to the next: steps 0 and 2 regularized with 2 * lam, step 1 ERM.
    har, erm = _sgd_model(lam=3.0), _sgd_model(lam=0.0)
    weights, regs = har.get_weights(), []
    for step in range(3):
        ref = har if step % 2 == 0 else erm
        ref.set_weights(weights)
        ref.train_on_batch(x[16 * step : 16 * step + 16], y[16 * step : 16 * step + 16])
        if step % 2 == 0:
            regs.append(ref.get_metrics_result()["reg"])
        weights = ref.get_weights()
    for got, want in zip(model.get_weights(), weights, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    # The logged reg is the mean over the regularized steps (0 and 2) only.
    assert regs[0] > 0 and regs[1] > 0
    assert logs["reg"][0] == pytest.approx(np.mean(regs), rel=1e-5)


def test_train_step_runs_the_kind_of_step_its_caller_picks():
    """train_step(data, regularized=...) (custom loops): True is a HAR step with
    reg_every * lam, False an ERM step, whatever the step count says."""
    x, y = _data(n=16)
    model = _sgd_model(lam=1.5, reg_every=2)
    har, erm = _sgd_model(lam=3.0), _sgd_model(lam=0.0)
    weights = model.get_weights()
    # Step 0 would be regularized by the count: ERM first, then HAR (count says ERM).
    for regularized, ref in ((False, erm), (True, har)):
        tf.function(model.train_step)((x, y), regularized=regularized)
        ref.set_weights(weights)
        ref.train_on_batch(x, y)
        weights = ref.get_weights()
        for got, want in zip(model.get_weights(), weights, strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="Python bool"):
        model.train_step((x, y), regularized=tf.constant(True))
    with pytest.raises(ValueError, match="reg_every=1"):
        _sgd_model(lam=1.0).train_step((x, y), regularized=False)


def test_reg_every_is_saved_and_checked(tmp_path):
    model = _sgd_model(lam=1.0, reg_every=3)
    assert model.get_config()["reg_every"] == 3
    assert harness.run_model_saving_test(model, tmp_path / "m.keras").reg_every == 3
    for bad in (0, 1.5):
        with pytest.raises(ValueError, match="reg_every"):
            HARModel(tiny_nets.tiny_backbone(), lam=1.0, reg_every=bad)
