"""The whole pipeline through its command line, on a small generated IDX dataset."""

import json
import math
import os

import numpy as np
import pytest

from configs import fashion_mnist_hetero
from pipeline.core import stage
from tests import harness
from tests.pipeline import idx_fixtures

CONFIG = harness.config(variant="")


def _pipeline(workdir, *overrides, config=CONFIG + ":smoke"):
    return harness.run_module(
        "pipeline.run",
        f"--config={config}",
        f"--workdir={workdir}",
        *overrides,
        timeout=900,
        keep_data_dir=False,
    )


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("idx")
    idx_fixtures.write_dataset(directory, num_train=1500, num_test=300)
    return str(directory)


@pytest.fixture(scope="module")
def completed(tmp_path_factory, idx_dir):
    workdir = str(tmp_path_factory.mktemp("e2e") / "work")
    result = _pipeline(
        workdir, f"--config.data.data_dir={idx_dir}", "--config.export.push_destination=serving/har"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir, result


@pytest.mark.slow
def test_every_stage_writes_its_artifacts(completed):
    workdir, result = completed
    for name in stage.STAGES:
        assert stage.is_complete(workdir, name), name
        assert not os.path.exists(os.path.join(workdir, name + ".partial"))
    assert os.path.isfile(os.path.join(workdir, "preprocess", "manifest.json"))
    pre = np.load(os.path.join(workdir, "pretrain", "split.npz"))
    assert len(np.intersect1d(pre["half_a"], pre["half_b"])) == 0
    for run in ("erm", "har"):
        assert os.path.isfile(os.path.join(workdir, "train", run, "model.keras"))
    assert os.path.isfile(os.path.join(workdir, "export", "har", "1", "saved_model.pb"))
    # The results table is printed.
    assert "| run | noisy_rare | clean | overall |" in result.stdout


@pytest.mark.slow
def test_tau_and_report_are_well_formed(completed):
    workdir, _ = completed
    tau = stage.read_json(os.path.join(workdir, "estimate_tau", "tau.json"))
    assert len(tau["tau"]) == 10 and max(tau["tau"]) == pytest.approx(1.0)
    assert all(0.0 <= t <= 1.0 for t in tau["tau"])
    # n per class equals the labels of the records actually written.
    manifest = stage.read_json(os.path.join(workdir, "preprocess", "manifest.json"))
    assert sum(tau["n"]) == manifest["splits"]["train"]["num_examples"]
    report = stage.read_json(os.path.join(workdir, "evaluate", "report.json"))
    assert list(report["runs"]) == ["erm", "har"]
    for r in report["runs"].values():
        values = [r["test"]["overall"], *r["test"]["groups"].values(), *r["test"]["per_class"]]
        assert all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in values)
        assert r["test"]["num_examples"] == 300
    assert report["runs"]["erm"]["final_train"]["reg"] == 0.0
    assert report["runs"]["har"]["final_train"]["reg"] > 0.0


@pytest.mark.slow
def test_blessing_infra_blessing_and_push_agree(completed):
    """Each run's blessing is printed and written; the export is infra-blessed; the
    push copied the version into <workdir>/serving/har exactly when HAR is blessed."""
    workdir, result = completed
    statuses = {}
    for run in ("erm", "har"):
        b = stage.read_json(os.path.join(workdir, "evaluate", run, "blessing.json"))
        statuses[run] = b["status"]
        assert f"== blessing of run {run}: {b['status']}" in result.stdout
        assert set(b["thresholds"]) == {"overall_floor", "noisy_rare_vs_erm", "overall_vs_erm"}
    infra = stage.read_json(os.path.join(workdir, "export", "infra_blessing.json"))
    assert infra["status"] == "INFRA_BLESSED" and infra["max_abs_diff"] <= infra["tolerance"]
    record = stage.read_json(os.path.join(workdir, "push", "push.json"))
    pushed = os.path.join(workdir, "serving", "har", "1", "saved_model.pb")
    assert record["pushed"] == (statuses["har"] == "BLESSED") == os.path.isfile(pushed)
    assert ("REFUSED" in result.stdout) == (not record["pushed"])
    assert "== push: run 'har'" in result.stdout


@pytest.mark.slow
def test_force_push_reruns_only_push(completed, idx_dir):
    workdir, _ = completed
    result = _pipeline(
        workdir,
        f"--config.data.data_dir={idx_dir}",
        "--config.export.push_destination=serving/har",
        "--force_push",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for name in stage.STAGES[:-1]:
        assert f"== {name}: complete, skipped" in result.stdout
    assert "== push: rerunning" in result.stdout
    record = stage.read_json(os.path.join(workdir, "push", "push.json"))
    assert record["pushed"] is True and record["forced"] == bool(record["reasons"])
    serving = os.path.join(workdir, "serving", "har")
    assert os.listdir(serving) == ["1"]  # the version only, no temporary directory
    assert os.path.isfile(os.path.join(serving, "1", "saved_model.pb"))


@pytest.mark.slow
def test_rerun_skips_completed_stages(completed, idx_dir):
    workdir, _ = completed
    before = {n: os.path.getmtime(os.path.join(workdir, n, stage.METADATA)) for n in stage.STAGES}
    result = _pipeline(
        workdir, f"--config.data.data_dir={idx_dir}", "--config.export.push_destination=serving/har"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for name in stage.STAGES:
        assert f"== {name}: complete, skipped" in result.stdout
    after = {n: os.path.getmtime(os.path.join(workdir, n, stage.METADATA)) for n in stage.STAGES}
    assert before == after


@pytest.mark.slow
def test_exported_model_serves_raw_uint8(completed):
    import tensorflow as tf

    workdir, _ = completed
    served = tf.saved_model.load(os.path.join(workdir, "export", "har", "1"))
    fn = served.signatures["serving_default"]
    out = fn(image=tf.zeros([3, 28, 28, 1], tf.uint8))
    probs = out["probabilities"].numpy()
    assert probs.shape == (3, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert out["class_id"].numpy().tolist() == probs.argmax(axis=1).tolist()


def _no_stage_complete(workdir):
    return not any(stage.is_complete(str(workdir), n) for n in stage.STAGES)


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides,message",
    [
        (["--config.data.dataset=cifar11"], "cifar11"),
        (["--config.data.data_dir=/nonexistent/idx"], "/nonexistent/idx"),
        (["--config.train.epoch=3"], "epoch"),
    ],
)
def test_bad_input_fails_clearly_and_marks_nothing_complete(tmp_path, overrides, message):
    workdir = tmp_path / "work"
    result = _pipeline(str(workdir), *overrides)
    assert result.returncode != 0
    assert message in result.stderr
    assert _no_stage_complete(workdir)


@pytest.mark.slow
def test_label_out_of_range_in_source(tmp_path):
    data = idx_fixtures.write_dataset(tmp_path / "idx", num_train=200, num_test=50)
    idx_fixtures.set_label(data["train"], 17, 10)
    workdir = tmp_path / "work"
    result = _pipeline(str(workdir), f"--config.data.data_dir={tmp_path / 'idx'}")
    assert result.returncode != 0
    assert "train-labels-idx1-ubyte" in result.stderr and "17" in result.stderr
    assert _no_stage_complete(workdir)


def test_needed_stages_skip_tau_when_no_run_uses_it():
    config = fashion_mnist_hetero.get_config("smoke")
    assert stage.needed_stages(config) == list(stage.STAGES)
    with config.unlocked():
        del config.train.runs["har"]
    assert stage.needed_stages(config) == ["preprocess", "train", "evaluate", "export", "push"]


def test_unknown_variant_is_an_error():
    with pytest.raises(ValueError, match="unknown variant 'quik'"):
        fashion_mnist_hetero.get_config("quik")


def test_write_json_is_strict_json(tmp_path):
    path = str(tmp_path / "x.json")
    stage.write_json(path, {"b": [1.5, float("nan")], "a": np.float32(2.0)})
    with open(path) as f:
        text = f.read()
    assert "NaN" not in text
    assert json.loads(text) == {"a": 2.0, "b": [1.5, None]}
    assert not os.path.exists(path + ".tmp")
