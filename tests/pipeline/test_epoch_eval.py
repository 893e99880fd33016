"""TestSetMonitor: exact per-epoch test metrics, without changing training."""

import os

import numpy as np
import pytest

from pipeline import data, epoch_eval, evaluate, modeling
from tests.pipeline import workdir_fixtures


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("work"))
    config = workdir_fixtures.make_workdir(str(tmp_path_factory.mktemp("idx")), workdir)
    config.train.epochs = 2
    return config, workdir


def _expected(model, config, workdir) -> dict:
    """The monitor's metrics computed independently: model.predict over the test split
    (batched as the monitor and evaluate batch it), then numpy."""
    ds = data.make_dataset(workdir, "test", batch_size=config.eval.batch_size, training=False)
    logits = model.predict(ds, verbose=0)
    labels = np.concatenate([y.numpy() for _, y in ds])
    correct = np.argmax(logits, axis=-1) == labels
    out = {
        epoch_eval.TEST_ACCURACY: correct.mean(),
        epoch_eval.TEST_TOP5: evaluate.top_k_accuracy(labels, logits, 5),
    }
    for c in np.unique(labels):
        out[epoch_eval.class_accuracy_key(int(c))] = correct[labels == c].mean()
    return {k: float(v) for k, v in out.items()}


def _model(config):
    model = modeling.build_har_model(config, config.train, lam=0.0, seed=config.seed)
    modeling.compile_model(model, config.train, steps_per_epoch=10)
    return model


def test_monitor_metrics_equal_an_independent_computation(prepared):
    config, workdir = prepared
    model = _model(config)
    monitor = epoch_eval.monitor_for(config, workdir)
    monitor.set_model(model)
    logs = {"loss": 1.5}
    monitor.on_epoch_end(0, logs)
    expected = _expected(model, config, workdir)
    assert len(expected) == 12  # every class has test examples in the fixture
    assert logs == {"loss": 1.5, **expected}  # exactly, not approximately


def _fit(config, workdir, out_dir, *, monitor: bool) -> tuple:
    model = _model(config)
    callbacks = [epoch_eval.monitor_for(config, workdir)] if monitor else []
    ds = data.training_dataset(workdir, config.train, seed=config.seed)
    os.makedirs(out_dir)
    hist = modeling.fit(
        model, ds, config.train, out_dir=out_dir, callbacks=callbacks, tensorboard=False
    )
    return model, hist


def test_monitor_leaves_training_unchanged_and_is_recorded(prepared, tmp_path):
    config, workdir = prepared
    assert config.train.deterministic
    plain, plain_hist = _fit(config, workdir, str(tmp_path / "plain"), monitor=False)
    monitored, hist = _fit(config, workdir, str(tmp_path / "monitored"), monitor=True)
    for a, b in zip(plain.get_weights(), monitored.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    # Through the resume checkpoints' history into history.json, before its training
    # metrics (which are the same bits).
    test_keys = {k for k in hist if k.startswith(epoch_eval.PREFIX)}
    assert {k: hist[k] for k in hist if k not in test_keys} == plain_hist
    assert all(len(hist[k]) == 2 for k in test_keys)
    # The last epoch's entries are the final model's metrics.
    assert {k: hist[k][-1] for k in test_keys} == _expected(monitored, config, workdir)
