"""config.train.runs: what each run asks of the train stage (regularizer, reg_every,
checkpoint_blocks)."""

import os

import ml_collections
import numpy as np
import pytest

from configs import common, fashion_mnist_hetero
from pipeline import preprocess, train
from pipeline.core import stage
from pipeline.core.stage import PipelineError
from pipeline.data import datasets
from pipeline.training import epoch_eval, modeling
from tests.pipeline import idx_fixtures


@pytest.mark.slow
def test_reg_every_variant_trains_exact_and_approximate_har(tmp_path):
    """The train stage trains each run of the ",reg_every" variant with its own
    reg_every: the saved models carry it, and the approximations train otherwise."""
    config = fashion_mnist_hetero.get_config("smoke,reg_every")
    idx_fixtures.write_dataset(tmp_path / "idx", num_train=200, num_test=50)
    config.data.data_dir = str(tmp_path / "idx")
    config.data.limit_train, config.data.limit_test = 200, 50
    config.eval.per_epoch_test = False
    with config.unlocked():  # the exact run and one approximation keep the test short
        for name in list(config.train.runs)[2:]:
            del config.train.runs[name]
    workdir = str(tmp_path / "work")
    preprocess.run(config, workdir)
    with stage.stage_output(workdir, "estimate_tau") as out:
        stage.write_json(os.path.join(out, "tau.json"), {"tau": np.linspace(0.1, 1, 10).tolist()})
    train.run(config, workdir)
    runs = config.train.runs
    assert len(runs) > 1
    weights = {}
    for name, run_cfg in runs.items():
        run_dir = os.path.join(stage.stage_dir(workdir, "train"), name)
        model = modeling.load_model(os.path.join(run_dir, "model.keras"))
        assert (model.reg_every, model.lam) == (run_cfg.reg_every, run_cfg.lam)
        history = stage.read_json(os.path.join(run_dir, "history.json"))
        assert np.all(np.isfinite(history["loss"])) and history["reg"][0] > 0
        weights[run_cfg.reg_every] = model.backbone.get_weights()
    exact = weights.pop(1)
    assert weights, "the variant has no approximate run"
    for approximate in weights.values():
        assert not all(np.allclose(a, b) for a, b in zip(exact, approximate, strict=True))


def test_each_run_trains_a_model_with_its_own_lam_tau_and_reg_every(tmp_path, monkeypatch):
    """train.run builds one model per run from that run's settings: lam (0 for ERM),
    tau (estimate_tau's for "har", 1 for "uniform"), reg_every (1 when a run does not
    set it). The data readers and the fit are stand-ins: this is the config wiring."""
    config = fashion_mnist_hetero.get_config("smoke")
    config.eval.per_epoch_test = False
    legacy = ml_collections.ConfigDict(dict(regularizer="har", lam=2.0, drw=False))
    with config.unlocked():
        config.train.runs = ml_collections.ConfigDict(
            dict(
                erm=common.run(regularizer="none", lam=5.0, reg_every=2),
                uniform=common.run(regularizer="uniform", lam=0.5, reg_every=4),
                har=common.run(regularizer="har", lam=10.0, reg_every=3),
                legacy=legacy,  # written before reg_every existed
            ),
            sort_keys=False,
        )
    workdir = str(tmp_path)
    tau = np.linspace(0.1, 1.0, 10)
    with stage.stage_output(workdir, "estimate_tau") as out:
        stage.write_json(os.path.join(out, "tau.json"), {"tau": tau.tolist()})
    monkeypatch.setattr(datasets, "read_fit_labels", lambda wd: {"label": np.arange(100) % 10})
    monkeypatch.setattr(datasets, "fit_keep_ids", lambda wd: None)
    monkeypatch.setattr(datasets, "training_dataset", lambda *a, **k: None)
    monkeypatch.setattr(epoch_eval, "label_set_monitors", lambda *a: [])
    fitted = {}
    monkeypatch.setattr(
        modeling,
        "fit",
        lambda model, ds, section, out_dir, callbacks: fitted.update(
            {os.path.basename(out_dir): model}
        ),
    )
    train.run(config, workdir)
    got = {
        name: (m.lam, m.reg_every, [round(float(t), 6) for t in m.tau.numpy()])
        for name, m in fitted.items()
    }
    assert got == {
        "erm": (0.0, 2, [1.0] * 10),
        "uniform": (0.5, 4, [1.0] * 10),
        "har": (10.0, 3, [round(float(t), 6) for t in tau]),
        "legacy": (2.0, 1, [round(float(t), 6) for t in tau]),
    }


def test_memorization_is_scored_on_every_training_record_whatever_a_run_drops(
    tmp_path, monkeypatch
):
    """A run that drops examples trains on the rest but its fit_* pass covers the
    whole training set (the wrong labels it dropped included), as every other run's:
    the memorization of two methods is then a share of the same examples. The data
    readers and the fit are stand-ins: this is which ids go where."""
    config = fashion_mnist_hetero.get_config("smoke")
    config.eval.per_epoch_test = False
    with config.unlocked():
        config.train.runs = ml_collections.ConfigDict(
            dict(
                erm=common.run(regularizer="none", lam=0.0),
                oracle=common.run(regularizer="none", lam=0.0, drop="wrong_labels"),
                clean=common.run(regularizer="none", lam=0.0, labels="clean"),
            ),
            sort_keys=False,
        )
    ids = np.arange(100, 120)  # the training records (the validation split is apart)
    label = np.arange(20) % 10
    clean = label.copy()
    wrong = [3, 7, 8, 15]
    clean[wrong] = (label[wrong] + 1) % 10
    fit = {"id": ids, "label": label, "clean_label": clean}
    monkeypatch.setattr(datasets, "read_fit_labels", lambda wd: fit)
    monkeypatch.setattr(datasets, "fit_keep_ids", lambda wd: ids)
    trained_on, scored_on = {}, {}

    def training_dataset(workdir, section, *, seed, keep_ids, label_key):
        return ("ds", tuple(keep_ids), label_key)

    def label_set_monitors(config, workdir, fit_ids):
        return [("monitor", tuple(fit_ids))]

    def fake_fit(model, ds, section, out_dir, callbacks):
        name = os.path.basename(out_dir)
        trained_on[name] = (ds[1], ds[2])
        scored_on[name] = [c[1] for c in callbacks if c[0] == "monitor"]

    monkeypatch.setattr(datasets, "training_dataset", training_dataset)
    monkeypatch.setattr(epoch_eval, "label_set_monitors", label_set_monitors)
    monkeypatch.setattr(modeling, "fit", fake_fit)
    train.run(config, str(tmp_path))
    everything = tuple(ids)
    right = tuple(i for k, i in enumerate(ids) if k not in wrong)
    assert trained_on == {
        "erm": (everything, "label"),
        "oracle": (right, "label"),
        "clean": (everything, "clean_label"),
    }
    assert scored_on == {name: [everything] for name in ("erm", "oracle", "clean")}


def test_checkpoint_blocks_reaches_regularized_models_only():
    config = fashion_mnist_hetero.get_config("smoke")
    assert config.train.checkpoint_blocks is False
    assert modeling.build_har_model(config, config.train, lam=1.0, seed=0).checkpoint_layers is None
    config.train.checkpoint_blocks = True
    har = modeling.build_har_model(config, config.train, lam=1.0, seed=0)
    assert har.checkpoint_layers == ["stage1_block1_out", "stage2_block1_out"]
    erm = modeling.build_har_model(config, config.train, lam=0.0, seed=0)
    assert erm.checkpoint_layers is None  # an ERM step has nothing to recompute
    config.model.widths = (4,)  # one stage of one block: nothing to cut between
    with pytest.raises(PipelineError, match="at least two residual blocks"):
        modeling.build_har_model(config, config.train, lam=1.0, seed=0)
    config.model.name, config.data.modality = "bilstm", "text"
    with pytest.raises(PipelineError, match="checkpoint_blocks recomputes residual blocks"):
        modeling.build_har_model(config, config.train, lam=1.0, seed=0)


@pytest.mark.parametrize(
    "run, match",
    [
        (common.run(regularizer="har", lam=0.0), "a har run needs lam > 0"),
        (common.run(regularizer="l2", lam=1.0), "regularizer 'l2' is not one of"),
    ],
)
def test_bad_runs_are_named(run, match):
    with pytest.raises(PipelineError, match=f"run 'x': {match}"):
        train.validate_runs({"x": run})


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_fit_whose_logs_stop_being_finite_is_a_divergence(tmp_path, bad):
    """finish_fit refuses a history with a NaN or inf in any logged key (an epoch that
    did not log a key is not one) as TrainingDiverged, which a study records as the
    run's result, and writes no model."""
    logs = [{"loss": 2.0, "fit_accuracy": None}, {"loss": 1.0, "reg": bad}]
    with pytest.raises(modeling.TrainingDiverged, match=r"training diverged: reg became"):
        modeling.finish_fit(None, logs, str(tmp_path), resume=False)
    assert not os.listdir(tmp_path)
    assert issubclass(modeling.TrainingDiverged, PipelineError)  # stage mains: one line
