"""TestSetMonitor: exact per-epoch test metrics, without changing training."""

import os

import numpy as np
import pytest

from pipeline import evaluate
from pipeline.core import stage
from pipeline.data import datasets
from pipeline.training import epoch_eval, modeling
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
    ds = datasets.make_dataset(workdir, "test", batch_size=config.eval.batch_size, training=False)
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


def _fit(config, workdir, out_dir, *, monitor: bool, resume: bool = True) -> tuple:
    model = _model(config)
    callbacks = [epoch_eval.monitor_for(config, workdir)] if monitor else []
    ds = datasets.training_dataset(workdir, config.train, seed=config.seed)
    os.makedirs(out_dir)
    hist = modeling.fit(
        model,
        ds,
        config.train,
        out_dir=out_dir,
        callbacks=callbacks,
        resume=resume,
        tensorboard=False,
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


def test_is_due_every_kth_epoch_and_the_last():
    due = [e for e in range(10) if epoch_eval.is_due(e, 3, 10)]
    assert due == [2, 5, 8, 9]  # epochs 3, 6, 9 and the last, 10
    assert [e for e in range(4) if epoch_eval.is_due(e, 1, 4)] == [0, 1, 2, 3]
    assert [e for e in range(4) if epoch_eval.is_due(e, 7, 4)] == [3]


@pytest.mark.parametrize("bad", [0, -2])
def test_per_epoch_every_must_be_a_positive_integer(prepared, bad):
    config, workdir = prepared
    config = config.copy_and_resolve_references()
    config.eval.per_epoch_every = bad  # (ConfigDict itself refuses a float or string)
    with pytest.raises(stage.PipelineError, match=r"config\.eval\.per_epoch_every .* got -?\d"):
        epoch_eval.monitor_for(config, workdir)
    for other in (1.5, "3", True, None):
        with pytest.raises(stage.PipelineError, match="per_epoch_every"):
            epoch_eval.check_every(other)


@pytest.mark.parametrize("resume", [True, False])
def test_every_kth_epoch_passes_are_the_every_epoch_figures(prepared, tmp_path, resume):
    """per_epoch_every=2 over 5 epochs: the test pass runs after epochs 2, 4 and 5;
    history.json has None at epochs 1 and 3 (aligned, with and without the resume
    checkpoints) and, at the others, exactly the every-epoch run's figures; the
    training itself is the same."""
    config, workdir = prepared
    config = config.copy_and_resolve_references()
    config.train.epochs = 5
    every_epoch, hist1 = _fit(config, workdir, str(tmp_path / "one"), monitor=True, resume=resume)
    config.eval.per_epoch_every = 2
    sparse, hist2 = _fit(config, workdir, str(tmp_path / "two"), monitor=True, resume=resume)
    for a, b in zip(every_epoch.get_weights(), sparse.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert sorted(hist1) == sorted(hist2)
    for key in hist1:
        if key.startswith(epoch_eval.PREFIX):
            assert hist2[key] == [None, hist1[key][1], None, hist1[key][3], hist1[key][4]]
        else:
            assert hist2[key] == hist1[key]
    saved = stage.read_json(str(tmp_path / "two" / "history.json"))
    assert saved[epoch_eval.TEST_ACCURACY][0] is None
    # The best epoch is the best of the evaluated ones.
    counts = [10] * config.data.num_classes
    best = evaluate.best_epoch(hist2, counts, {"all": tuple(range(config.data.num_classes))})
    tested = {e: v for e, v in enumerate(hist2[epoch_eval.TEST_ACCURACY]) if v is not None}
    assert best["epoch"] == max(tested, key=lambda e: (tested[e], -e)) + 1


def test_per_epoch_every_enters_only_the_train_fingerprint_and_1_is_neutral(prepared, monkeypatch):
    """Its default (1) leaves every fingerprint as it was before the field existed, so
    workdirs made then stay current; another value reruns train and what follows."""
    config, _ = prepared
    now = stage.fingerprints(config)
    before = config.copy_and_resolve_references()
    del before.eval["per_epoch_every"]
    train = tuple(f for f in stage.SECTIONS["train"] if f != "eval.per_epoch_every")
    monkeypatch.setitem(stage.SECTIONS, "train", train)
    assert stage.fingerprints(before) == now
    monkeypatch.undo()
    other = config.copy_and_resolve_references()
    other.eval.per_epoch_every = 10
    old, new = stage.fingerprints(config), stage.fingerprints(other)
    assert [k for k in old if old[k] != new[k]] == ["train", "evaluate", "export", "push"]
