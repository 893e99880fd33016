"""The export stage: the SavedModel's signature (via saved_model_cli) and the model card."""

import os
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl import logging

from pipeline import evaluate, export
from pipeline.core import stage
from pipeline.serving import infra_validation
from pipeline.training import modeling
from tests.pipeline import workdir_fixtures

CLI = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")


@pytest.fixture(scope="module")
def workdirs(tmp_path_factory):
    """Two workdirs: export without the evaluate stage, and after it."""
    bare = str(tmp_path_factory.mktemp("bare"))
    config = workdir_fixtures.make_workdir(str(tmp_path_factory.mktemp("idx")), bare)
    evaluated = str(tmp_path_factory.mktemp("evaluated"))
    for name in ("preprocess", "estimate_tau", "train"):
        shutil.copytree(os.path.join(bare, name), os.path.join(evaluated, name))
    export.run(config, bare)
    evaluate.run(config, evaluated)
    export.run(config, evaluated)
    return config, bare, evaluated


def test_saved_model_cli_shows_the_uint8_signature(workdirs):
    _, bare, _ = workdirs
    result = subprocess.run(
        [
            CLI,
            "show",
            "--dir",
            os.path.join(bare, "export", "har", "1"),
            "--tag_set",
            "serve",
            "--signature_def",
            "serving_default",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    inputs, outputs = out.split("output(s):")
    assert "inputs['image']" in inputs
    assert "dtype: DT_UINT8" in inputs
    assert "shape: (-1, 28, 28, 1)" in inputs
    assert "outputs['probabilities']" in outputs and "DT_FLOAT" in outputs
    assert "shape: (-1, 10)" in outputs
    assert "outputs['class_id']" in outputs and "DT_INT64" in outputs


def test_model_card_without_evaluate(workdirs):
    _, bare, _ = workdirs
    card_dir = os.path.join(bare, "export", "har")
    assert sorted(os.listdir(card_dir)) == ["1", "model_card.json", "model_card.md"]
    card = stage.read_json(os.path.join(card_dir, "model_card.json"))
    manifest = stage.read_json(os.path.join(bare, "preprocess", "manifest.json"))
    assert card["metrics"] is None
    assert card["data"]["dataset"] == "fashion_mnist"
    assert card["data"]["train_examples"] == manifest["splits"]["train"]["num_examples"]
    assert card["data"]["imbalance"]["targets"] == manifest["imbalance"]["targets"]
    assert card["data"]["noise"] == {"kind": "pairs", "pairs": [[0, 6], [2, 4]], "flip_prob": 0.4}
    rates = manifest["splits"]["train"]["transition_rates"]
    assert card["data"]["true_noise_rate"] == pytest.approx([1 - rates[c][c] for c in range(10)])
    assert card["config"]["run"] == {
        "regularizer": "har",
        "lam": 10.0,
        "drw": False,
        "reg_every": 1,
        "drop": "none",
        "labels": "noisy",
    }
    assert card["signature"]["inputs"]["image"] == {
        "dtype": "uint8",
        "shape": [-1, 28, 28, 1],
        "range": [0, 255],
    }
    with open(os.path.join(card_dir, "model_card.md")) as f:
        md = f.read()
    assert "evaluate stage had not completed" in md
    assert "input `image`: uint8 [-1, 28, 28, 1]" in md


def test_model_card_with_evaluate_metrics(workdirs):
    _, _, evaluated = workdirs
    card = stage.read_json(os.path.join(evaluated, "export", "har", "model_card.json"))
    report = stage.read_json(os.path.join(evaluated, "evaluate", "report.json"))
    assert card["metrics"]["test"] == report["runs"]["har"]["test"]
    with open(os.path.join(evaluated, "export", "har", "model_card.md")) as f:
        md = f.read()
    top1 = 100 * report["runs"]["har"]["test"]["overall"]
    assert f"top-1 accuracy: {top1:.2f}%" in md
    # Groups in the config's order.
    assert md.index("- noisy_rare: ") < md.index("- clean: ")


def test_the_export_is_infra_blessed(workdirs):
    _, bare, _ = workdirs
    record = stage.read_json(os.path.join(bare, "export", infra_validation.FILE))
    assert record["status"] == infra_validation.INFRA_BLESSED
    assert record["num_examples"] == infra_validation.NUM_EXAMPLES
    assert record["max_abs_diff"] <= infra_validation.TOLERANCE
    assert "-m pipeline.serve" in record["server"]


@pytest.mark.slow
def test_an_export_that_answers_otherwise_is_not_exported(workdirs, tmp_path, monkeypatch):
    """A SavedModel of other weights (a network initialized with another seed than the
    trained run's) loads and answers, but not as the run's Keras model: the stage
    fails and nothing is complete."""
    config, bare, _ = workdirs
    workdir = str(tmp_path / "work")
    for name in ("preprocess", "estimate_tau", "train"):
        shutil.copytree(os.path.join(bare, name), os.path.join(workdir, name))
    other = modeling.build_har_model(config, config.train, lam=0.0, seed=1)
    write = export.export_saved_model
    monkeypatch.setattr(export, "export_saved_model", lambda _, *a, **k: write(other, *a, **k))
    with pytest.raises(stage.PipelineError, match="infra validation: the served model answers"):
        export.run(config, workdir)
    assert not stage.is_complete(workdir, "export")
    assert not os.path.exists(os.path.join(workdir, "export"))


def test_exported_model_takes_raw_uint8(workdirs):
    _, bare, _ = workdirs
    fn = tf.saved_model.load(os.path.join(bare, "export", "har", "1")).signatures["serving_default"]
    out = fn(image=tf.fill([2, 28, 28, 1], tf.constant(200, tf.uint8)))
    probs = out["probabilities"].numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert out["class_id"].numpy().tolist() == probs.argmax(axis=1).tolist()


def test_export_leaves_absl_logging_level_alone(tmp_path):
    inputs = keras.Input((4, 4, 1))
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(inputs)))
    logger = logging.get_absl_logger()
    level = logger.level
    export.export_saved_model(model, str(tmp_path / "1"), (4, 4, 1))
    assert logger.level == level
