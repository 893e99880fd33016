"""Infra validation (pipeline/serving/infra_validation.py): `python -m pipeline.serve` in a
subprocess on an export, real requests, answers compared with the Keras model's."""

import os

import numpy as np
import pytest
import tensorflow as tf

from pipeline import export
from pipeline.core import stage
from pipeline.serving import infra_validation
from tests.pipeline.test_serve import SHAPE, tiny_model

IMAGES = np.random.default_rng(0).integers(0, 256, size=(6, *SHAPE), dtype=np.uint8)


def keras_probabilities(model) -> np.ndarray:
    return tf.nn.softmax(model.predict_on_batch(IMAGES.astype(np.float32)), axis=-1).numpy()


@pytest.mark.slow  # the export stage's tests infra-validate good exports on every run
def test_a_good_export_is_infra_blessed(tmp_path):
    model = tiny_model(seed=1)
    export.export_saved_model(model, str(tmp_path / "tiny" / "1"), SHAPE)
    record = infra_validation.validate(
        str(tmp_path / "tiny"), "tiny", 1, IMAGES, keras_probabilities(model)
    )
    assert record["status"] == infra_validation.INFRA_BLESSED
    assert record["num_examples"] == len(IMAGES)
    assert 0 <= record["max_abs_diff"] <= infra_validation.TOLERANCE


def test_an_export_that_answers_otherwise_is_refused(tmp_path):
    """The SavedModel's serving function is another network's (seed 2): it loads and
    answers, but not as the Keras model (seed 1) does."""
    export.export_saved_model(tiny_model(seed=2), str(tmp_path / "tiny" / "1"), SHAPE)
    expected = keras_probabilities(tiny_model(seed=1))
    with pytest.raises(stage.PipelineError, match="example 0 with probabilities .* away from"):
        infra_validation.validate(str(tmp_path / "tiny"), "tiny", 1, IMAGES, expected)


@pytest.mark.slow
def test_an_export_that_does_not_load_is_refused_and_the_server_stops(tmp_path, monkeypatch):
    model = tiny_model(seed=1)
    version = tmp_path / "tiny" / "1"
    export.export_saved_model(model, str(version), SHAPE)
    (version / "saved_model.pb").write_bytes(b"not a SavedModel")
    servers = []
    enter = infra_validation.ServerProcess.__enter__
    monkeypatch.setattr(
        infra_validation.ServerProcess,
        "__enter__",
        lambda self: servers.append(self) or enter(self),
    )
    with pytest.raises(stage.PipelineError, match="could not load version 1 of .*Cannot load"):
        infra_validation.validate(
            str(tmp_path / "tiny"), "tiny", 1, IMAGES, keras_probabilities(model)
        )
    assert servers[0].proc.returncode is not None  # shut down, also on failure


def test_compare_tolerance_and_class_ids():
    expected = np.array([[0.7, 0.2, 0.1], [0.5, 0.5, 0.0]])
    near = {"probabilities": expected + 5e-5, "class_id": [0, 1]}  # a tie: either id
    assert infra_validation.compare(near, expected) == pytest.approx(5e-5)
    with pytest.raises(stage.PipelineError, match="example 1 with probabilities 0.0002"):
        infra_validation.compare(
            {"probabilities": expected + [[0, 0, 0], [0, 2e-4, 0]], "class_id": [0, 0]}, expected
        )
    with pytest.raises(stage.PipelineError, match="class_id 2 for example 0, the Keras model 0"):
        infra_validation.compare({"probabilities": expected, "class_id": [2, 0]}, expected)
    with pytest.raises(stage.PipelineError, match=r"shape \[2, 2\], the Keras model \[2, 3\]"):
        infra_validation.compare({"probabilities": expected[:, :2], "class_id": [0, 0]}, expected)


def test_text_instances_are_b64_of_the_exact_bytes():
    import base64

    texts = ["café".encode(), b"plain"]
    rows = infra_validation.instances(texts)
    assert [base64.b64decode(r["b64"]) for r in rows] == texts
    assert infra_validation.instances(np.zeros((1, 2, 1, 1), np.uint8)) == [[[[0]], [[0]]]]


def test_server_command_is_the_projects_rest_server():
    cmd = infra_validation._server_command("/m/tiny", "tiny")
    assert cmd[1:3] == ["-m", "pipeline.serve"] and "--port=0" in cmd
    assert os.path.basename(cmd[0]).startswith("python")
